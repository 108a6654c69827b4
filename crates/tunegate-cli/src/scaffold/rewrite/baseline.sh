#!/bin/sh
# Returns the draft itself: the line after "Draft:" or after "Rewrite this draft reply:".
cat | awk '/^Draft: /{sub(/^Draft: /,""); print; exit} f{print; exit} /^Rewrite this draft reply:/{f=1}'
