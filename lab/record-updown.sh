#!/bin/sh
# Lab only (run-lab.sh --record-updown): pluto's leftupdown in the lab. Appends the environment pluto passed, in the
# hook's own record format (`export -p` + "# nhrpbridge-end"), to updown.env next to the
# spool, then runs the real hook with the same arguments. The lab copies updown.env out,
# so that a run's updown calls can become test samples (samples/lab/libreswan-*/).
spool=; prev=
for a in "$@"; do [ "$prev" = --spool ] && spool=$a; prev=$a; done
[ -n "$spool" ] && { export -p; echo '# nhrpbridge-end'; } >> "$spool/../updown.env" 2>/dev/null
exec /bin/sh "${0%/lab/record-updown.sh}/hooks/nhrpbridge-updown" "$@"
