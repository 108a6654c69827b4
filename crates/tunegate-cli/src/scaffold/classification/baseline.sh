#!/bin/sh
# A keyword baseline: reads the rendered prompt on stdin, looks only at the
# customer's message (the last "Message:" line, or the line after
# "Customer message:"), prints one team. Replace it with a real model.
msg=$(awk 'nxt{m=$0; nxt=0} /^Customer message:/{nxt=1} /^Message: /{m=substr($0,10)} END{print tolower(m)}')
case "$msg" in
  *refund*|*charged*|*invoice*|*payment*) echo billing ;;
  *password*|*login*|*account*) echo account ;;
  *crash*|*error*|*bug*) echo technical ;;
  *deliver*|*package*|*tracking*) echo shipping ;;
  *) echo other ;;
esac
