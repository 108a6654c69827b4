#!/bin/sh
# Prints the first six words of the ticket text.
cat | sed -e 's/^Ticket: //' -e '/^Subject:/d' -e '/^Write a subject/d' | tr '\n' ' ' | awk '{for(i=1;i<=6&&i<=NF;i++) printf "%s%s", $i, (i<6&&i<NF?" ":""); print ""}' | sed 's/[.!?]*$//'
