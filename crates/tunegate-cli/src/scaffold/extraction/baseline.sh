#!/bin/sh
# A regex baseline: finds an order number and an email address in the
# prompt's email text; it cannot find products. Replace it with a real model.
text=$(cat | grep -v '^Return' | grep -v 'JSON with')
order=$(printf '%s' "$text" | grep -o -E '[A-Z]{2}-[0-9]{4,}' | head -n 1)
email=$(printf '%s' "$text" | grep -o -E '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]+' | head -n 1)
q() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf 'null'; fi; }
printf '{"order_id": %s, "email": %s, "product": null}\n' "$(q "$order")" "$(q "$email")"
