#!/bin/sh
# Keyword baseline for support-triage: a deliberately simple, offline
# "provider" that needs no model. tunegate runs it with the rendered prompt on
# stdin (exec: provider) and takes what it prints as the completion.
#
# It looks only at the customer's message: the last line starting with
# "Message: " (prefix stripped), or the line after a line "Customer message:".
# It lower-cases the message and picks the first team whose keywords match.
# It is the floor a model has to beat, not a serious router: it knows nothing
# of the routing policy's edge cases (damaged deliveries, two-topic messages).
msg=$(awk '
  nxt { m = $0; nxt = 0 }
  /^Customer message:/ { nxt = 1; next }
  /^Message: / { m = substr($0, 10) }
  END { print tolower(m) }
')
case "$msg" in
  *password*|*log\ in*|*login*|*sign\ in*|*signin*|*locked\ out*|*two-step*|*2fa*|*verification*|*username*|*my\ account*|*hacked*)
    echo account ;;
  *refund*|*charged*|*charge*|*invoice*|*receipt*|*payment*|*billed*|*billing*|*subscription*|*discount*|*promo*|*price*|*paypal*|*instalment*)
    echo billing ;;
  *deliver*|*parcel*|*package*|*tracking*|*courier*|*dispatch*|*shipped*|*shipping*|*return\ label*|*arrived*|*dpd*|*ups\ *|*evri*|*royal\ mail*)
    echo shipping ;;
  *error*|*crash*|*not\ working*|*doesn*t\ work*|*won*t*|*wifi*|*wi-fi*|*firmware*|*update*|*offline*|*reset*|*leak*|*noise*|*connect*|*pair*|*app*)
    echo technical ;;
  *)
    echo other ;;
esac
