#!/bin/bash
# lab/mkroot.sh FLAVOUR: print the root directory the lab boots for FLAVOUR, building it
# first when needed.
#   debian12  the host's own / (this machine is Debian 12): nothing to build
#   debian13  a Debian 13 (trixie) root made with mmdebstrap from Debian's packages, cached
#             in /var/cache/nhrpbridge-lab/debian13-<hash of the package list>: reused while
#             the list is unchanged, rebuilt otherwise. The mirror is the one apt already uses.
# Progress goes to stderr; the path alone to stdout.
set -euo pipefail
FLAVOUR=${1:?usage: mkroot.sh debian12|debian13}
PKGS="libreswan libnss3-tools frr iproute2 iputils-ping tcpdump iptables kmod procps util-linux
python3 python3-yaml python3-jinja2 python3-cryptography python3-watchdog python3-prometheus-client
strongswan-swanctl conntrack"
case "$FLAVOUR" in
  debian12) echo /; exit 0;;
  debian13) SUITE=trixie;;
  *) echo "mkroot.sh: unknown flavour '$FLAVOUR' (debian12 or debian13)" >&2; exit 2;;
esac
CACHE=/var/cache/nhrpbridge-lab
KEY=$(printf '%s %s\n' "$SUITE" "$PKGS" | sha256sum | cut -c1-12)
DIR=$CACHE/$FLAVOUR-$KEY
if [ -f "$DIR/.complete" ]; then echo "$DIR"; exit 0; fi
command -v mmdebstrap >/dev/null || {
  echo "mkroot.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 2; }
# the Debian mirror apt is configured with (deb822 or one-line format)
MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -v security | head -1)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' \
  /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
[ -n "$MIRROR" ] || { echo "mkroot.sh: no Debian mirror found in apt's sources" >&2; exit 2; }
rm -rf "$CACHE/$FLAVOUR-"*              # older package lists
mkdir -p "$CACHE"
echo "building the $FLAVOUR root ($SUITE) in $DIR ..." >&2
t0=$(date +%s)
mmdebstrap --quiet --variant=apt --include="$(echo $PKGS | tr ' ' ,)" \
  "$SUITE" "$DIR.tmp" "$MIRROR" >&2
# the UML kernel is the host's: its modules must be in the guest's tree
mkdir -p "$DIR.tmp/usr/lib/uml"
cp -a /usr/lib/uml/modules "$DIR.tmp/usr/lib/uml/"
mv "$DIR.tmp" "$DIR"
touch "$DIR/.complete"
echo "built $DIR in $(( $(date +%s) - t0 ))s" >&2
echo "$DIR"
