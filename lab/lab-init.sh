#!/bin/sh
# PID 1 inside the user-mode-linux guest (adapted from the reference lab recipe).
# Stage 1 builds an overlay root (lower = the host's / via hostfs, read-only in effect;
# upper = guest tmpfs) and bind-mounts only $LABOUT writable, then chroots into it: the
# guest cannot write the host anywhere else.
#
# Topology (inside the UML kernel only):
#   br0 <-veth-> netns labhub    eth0 198.51.100.1/24  gre1 203.0.113.1
#       <-veth-> netns labspoke1 eth0 198.51.100.11/24 gre1 203.0.113.11
#       <-veth-> netns labspoke2 eth0 198.51.100.12/24 gre1 203.0.113.12
#       <-veth-> netns labspoke3 eth0 198.51.100.13/24 gre1 203.0.113.13 (forged certificate)
# Per node: pluto (ipsec.conf from `nhrpbridge render`, X.509 from the lab CA, leftupdown =
# our hook), and in a private mount namespace (own /run, so /run/charon.vici is per node)
# `nhrpbridge serve` (VICI socket, nhrp event socket, log follower), zebra and nhrpd. nhrpd,
# not this script, triggers every IKE negotiation through nhrpbridge's VICI socket.
# Kernel command line: LABOUT (results dir), SRC (project copy), PY (python3 binary),
# FLAVOUR (debian12: the host's own root; debian13: a root made by lab/mkroot.sh, which does
# not hold $LABOUT: stage 1 mounts it from the host through hostfs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
LABAUTH=${LABAUTH:-cert}    # cert | psk (run-lab.sh --auth): a PSK run has the base scenarios only
# (and dual-hub: a second hub, 198.51.100.2 / 203.0.113.2, an NHS of spoke1-3 there)
if [ "$LABSTAGE" != 2 ]; then
  mount -t proc proc /proc
  mount -t tmpfs tmpfs /tmp
  KV=$(uname -r)
  mkdir -p /tmp/modroot/lib/modules/$KV
  mount --bind /usr/lib/uml/modules/$KV /tmp/modroot/lib/modules/$KV
  mkdir -p /tmp/ov/upper /tmp/ov/work /tmp/ov/root
  if /sbin/modprobe -d /tmp/modroot overlay &&
     mount -t overlay overlay -o lowerdir=/,upperdir=/tmp/ov/upper,workdir=/tmp/ov/work /tmp/ov/root &&
     mkdir -p "/tmp/ov/root$LABOUT" &&
     if [ -d "$LABOUT" ]; then mount --bind "$LABOUT" "/tmp/ov/root$LABOUT"
     else mount -t hostfs none "/tmp/ov/root$LABOUT" -o "$LABOUT"; fi; then
    umount /tmp/modroot/lib/modules/$KV
    LABSTAGE=2 exec chroot /tmp/ov/root "$0"
  fi
  echo "STAGE1-FAIL: could not build the overlay root (LABOUT=$LABOUT); refusing to run on the host fs"
  echo o > /proc/sysrq-trigger 2>/dev/null; poweroff -f
fi
# ---- stage 2: inside the overlay root ----
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t devtmpfs dev /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts 2>/dev/null; mount -t tmpfs tmpfs /dev/shm
ip link set lo up
NODES="hub spoke1 spoke2 spoke3"
up() { read -r u _ < /proc/uptime; echo "$u"; }   # builtins only: no process started
vt() { ip netns exec lab$1 vtysh --vty_socket /tmp/lab/$1/frr -c "$2" 2>&1; }
wk() { ipsec whack --rundir /tmp/lab/$1/run "$2"; }
nblog() { cat "$LABOUT/$1/nhrpbridge.log" 2>/dev/null; }
RESULTS=""
# run-lab.sh --only a,b: these scenarios only (registration always runs; a scenario may
# count on what an earlier one left, e.g. nat-rebind on nat: name both)
want() { [ -z "$LABONLY" ] || case ",$LABONLY," in *",$1,"*) return 0;; *) return 1;; esac; }
scenario() { # name verdict evidence
  echo "SCENARIO $1 $2: $3"; RESULTS="$RESULTS $1=$2"
}
waitfor() { # seconds command...: poll until the deadline (guest uptime), every 0.3 s for
  # the first 3 s, then every second. The guest is one CPU for every node: a process start
  # costs tens of ms there, and the earlier 0.3-s poll with awk per turn (six processes)
  # took most of it (the guest ran 82% busy, a hub pluto waited 10 s for its updown hooks)
  read -r w _ < /proc/uptime; end=$(( ${w%.*} + $1 )); k=0; shift
  until "$@" >/dev/null 2>&1; do
    read -r w _ < /proc/uptime; [ "${w%.*}" -ge "$end" ] && return 1
    k=$((k + 1)); if [ $k -le 10 ]; then sleep 0.3; else sleep 1; fi
  done; return 0
}
# scenario scale (PSK runs): twelve more spokes, 198.51.100.101-112 / 203.0.113.101-112
SCALE=""; [ "$LABAUTH" = psk ] && for i in $(seq 101 112); do SCALE="$SCALE spoke$i"; done
[ "$LABAUTH" = psk ] && NODES="hub hub2 spoke1 spoke2 spoke3"
ip_of() { case $1 in spoke1[0-9][0-9]) echo ${1#spoke};; hub) echo 1;; hub2) echo 2;; spoke1) echo 11;; spoke2) echo 12;; spoke3) echo 13;; spoke4) echo 14;; spoke5) echo 15;; esac; }

start_pluto() { # node (respawn loop; pid in run/pluto.pid)
  n=$1
  ( while :; do
      rm -f /tmp/lab/$n/run/pluto.pid /tmp/lab/$n/run/pluto.ctl
      ip netns exec lab$n /usr/libexec/ipsec/pluto --config /tmp/lab/$n/ipsec.conf --nofork \
        --rundir /tmp/lab/$n/run --nssdir /tmp/lab/$n/nss --secretsfile /tmp/lab/$n/ipsec.secrets \
        --ipsecdir /tmp/lab/$n >> /tmp/lab/$n/pluto.stdout 2>&1
      [ -f /tmp/lab/$n/norespawn-pluto ] && break; sleep 0.5
    done ) &
}

main() {
  echo "FLAVOUR $FLAVOUR: $(. /etc/os-release; echo "$PRETTY_NAME"), $(ipsec --version 2>&1 | head -1),\
 FRR $(/usr/lib/frr/nhrpd --version 2>&1 | sed -n 's/.*version //p' | head -1), $($PY --version 2>&1), auth $LABAUTH${LABONLY:+, only $LABONLY}"
  echo "T kernel-up $(up)"
  PV=$(ipsec --version 2>&1 | sed -n 's/.*Libreswan U\{0,1\}\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
  KV=$(uname -r)
  mkdir -p /tmp/modroot/lib/modules/$KV
  mount --bind /usr/lib/uml/modules/$KV /tmp/modroot/lib/modules/$KV
  /sbin/modprobe -d /tmp/modroot -a esp4 xfrm_user ip_gre veth bridge authenc gcm ghash_generic \
     ctr seqiv echainiv hmac sha256_generic sha512_generic drbg \
     nfnetlink nfnetlink_log x_tables xt_NFLOG xt_hashlimit ip_tables iptable_filter \
     nf_conntrack nf_nat iptable_nat xt_nat xt_MASQUERADE nf_conntrack_netlink xt_tcpudp 2>/tmp/modprobe.err \
     || echo "MODPROBE-FAIL: $(tr '\n' ' ' < /tmp/modprobe.err)"
  echo > /proc/sys/kernel/modprobe
  echo "T modules-loaded $(up)"
  ip link add br0 type bridge; ip link set br0 up
  for n in $NODES spoke4 spoke5 $SCALE; do
    o=$(ip_of $n); ip netns add lab$n
    ip -n lab$n link set lo up
    if [ $n = spoke4 ]; then
      # spoke4 and spoke5 sit behind a MASQUERADE router (labnat: 198.51.100.20 outside,
      # 192.0.2.1 on its inside bridge); their stacks start only in the nat scenarios
      ip netns add labnat; ip -n labnat link set lo up
      ip link add v-nat type veth peer name eth0 netns labnat; ip link set v-nat master br0 up
      ip -n labnat addr add 198.51.100.20/24 dev eth0; ip -n labnat link set eth0 up
      ip -n labnat link add brin type bridge; ip -n labnat addr add 192.0.2.1/24 dev brin
      ip -n labnat link set brin up
      ip netns exec labnat sysctl -qw net.ipv4.ip_forward=1
      ip netns exec labnat iptables-legacy -t nat -A POSTROUTING -o eth0 -j MASQUERADE
    fi
    if [ $n = spoke4 ] || [ $n = spoke5 ]; then
      ip -n labnat link add in-$n type veth peer name eth0 netns lab$n
      ip -n labnat link set in-$n master brin up
      ip -n lab$n addr add 192.0.2.$o/24 dev eth0; ip -n lab$n link set eth0 up
      ip -n lab$n route add default via 192.0.2.1
    else
      ip link add v-$n type veth peer name eth0 netns lab$n
      ip link set v-$n master br0 up
      ip -n lab$n addr add 198.51.100.$o/24 dev eth0; ip -n lab$n link set eth0 up
      # spoke1's address is dynamic (nbma: auto -> left=%defaultroute): a default route,
      # as DHCP would give it (scenario underlay-change moves the address)
      [ $n = spoke1 ] && ip -n lab$n route add default via 198.51.100.1
    fi
    # bound to eth0, or zebra sets gre1 admin-down (seen with FRR 8.4)
    ip -n lab$n tunnel add gre1 mode gre key 42 ttl 64 dev eth0
    ip -n lab$n addr add 203.0.113.$o/32 dev gre1; ip -n lab$n link set gre1 up
    case $n in hub|hub2) ip -n lab$n route add 203.0.113.0/24 dev gre1;;
      *) ip -n lab$n route add 203.0.113.0/24 via 203.0.113.1 dev gre1 onlink
         # hub2 (PSK runs) is reached directly: spoke -> hub2 traffic must not need hub1
         case " $NODES " in *" hub2 "*) case $n in spoke[123]) ip -n lab$n route add 203.0.113.2/32 dev gre1;; esac;; esac;;
    esac
    mkdir -p /tmp/lab/$n/run /tmp/lab/$n/nss /tmp/lab/$n/nb/spool /tmp/lab/$n/frr
    chmod 700 /tmp/lab/$n/nb/spool
    case $n in spoke1[0-9][0-9]) cp -a /tmp/lab/spoke1/nss/. /tmp/lab/$n/nss/;;  # (PSK: unused)
      *) ipsec initnss --nssdir /tmp/lab/$n/nss >/dev/null
         pk12util -i $LABOUT/pki/$n.p12 -d sql:/tmp/lab/$n/nss -W lab >/dev/null
         certutil -A -d sql:/tmp/lab/$n/nss -n ca -t CT,, -a -i $LABOUT/pki/ca.pem;; esac
    : > /tmp/lab/$n/ipsec.secrets; chmod 600 /tmp/lab/$n/ipsec.secrets
  done
  # `nhrpbridge render --check` for every node, here so that the check runs this flavour's
  # own `ipsec addconn`; one python process for all of them (a python start costs seconds)
  PYTHONPATH=$SRC $PY -c '
import sys
from nhrpbridge.cli import main
out = sys.argv[2]
for n in sys.argv[3:]:
    d = f"{out}/{n}"
    psk = ["--secrets", f"{d}/ipsec.secrets"] if sys.argv[1] == "psk" else []
    rc = main(["render", "-c", f"{d}/nhrpbridge.yaml", "--ipsec", f"{d}/conns.conf",
               "--frr", f"{d}/frr.conf", "--check", *psk])
    status = "ok" if rc == 0 else "FAILED"
    print(f"RENDER {n}: {status}", file=sys.stderr, flush=True)
'  $LABAUTH $LABOUT $NODES spoke4 spoke5 $SCALE 2>$LABOUT/render.log
  grep -v '^RENDER' $LABOUT/render.log | sed 's/^/  /'
  grep '^RENDER' $LABOUT/render.log
  grep -q '^RENDER .*FAILED' $LABOUT/render.log && RESULTS="$RESULTS render=FAIL"
  for n in $NODES spoke4 spoke5 $SCALE; do
    { printf 'config setup\n\tlogfile=%s\n\tlogtime=yes\n\n' "$LABOUT/$n/pluto.log"
      cat $LABOUT/$n/conns.conf; } > /tmp/lab/$n/ipsec.conf
    [ -f $LABOUT/$n/ipsec.secrets ] && cat $LABOUT/$n/ipsec.secrets > /tmp/lab/$n/ipsec.secrets
  done
  echo "T netns+nss-ready $(up)"
  for n in $NODES; do start_pluto $n; done
  for n in $NODES; do
    waitfor 20 wk $n --globalstatus || echo "PLUTO $n NOT UP"
  done
  echo "T plutos-up $(up)"
  tcpdump -i br0 -nn -U -w /tmp/lab/wire.pcap 'ip proto 47 or ip proto 50 or udp port 4500 or udp port 500' >/tmp/lab/tcpdump.log 2>&1 &
  TD=$!
  waitfor 5 grep -q listening /tmp/lab/tcpdump.log
  ip netns exec labhub sysctl -qw net.ipv4.ip_forward=1
  # hub: NFLOG for hub-transit gre1->gre1 traffic (FRR docs rule; iptables-legacy works here)
  ip netns exec labhub iptables-legacy -A FORWARD -i gre1 -o gre1 -m hashlimit --hashlimit-upto 4/minute \
    --hashlimit-burst 1 --hashlimit-mode srcip,dstip --hashlimit-srcmask 24 --hashlimit-dstmask 24 \
    --hashlimit-name loglimit-0 -j NFLOG --nflog-group 1 --nflog-size 128 2>&1 | grep -v 'has never worked'
  STARTING=""
  start_stack() { # node: nhrpbridge, zebra and nhrpd in its namespace, in the background
    n=$1; d=/tmp/lab/$n/frr
    echo "hostname $n-zebra" > $d/zebra.conf
    { echo "hostname $n-nhrpd"; echo "log timestamp precision 6"; echo "debug nhrp all"
      grep -v '^ ip address ' $LABOUT/$n/frr.conf; } > $d/nhrpd.conf
    chown -R frr:frr $d
    # never `nsenter -m` into this namespace later (it escapes the overlay): restarts go
    # through the respawn loops below
    ip netns exec lab$n unshare -m --propagation private sh -c "
      mount -t tmpfs tmpfs /run
      ( while :; do PYTHONPATH=$SRC $PY -m nhrpbridge serve -c $LABOUT/$n/nhrpbridge.yaml \
          2>>$LABOUT/$n/nhrpbridge.log & echo \$! > /tmp/lab/$n/nb.pid; wait \$!
        echo \"nhrpbridge exited rc=\$? at \$(cut -d' ' -f1 /proc/uptime)\" >> $LABOUT/$n/nhrpbridge.log
        [ -f /tmp/lab/$n/norespawn ] && break; sleep 0.3; done ) &
      i=0; until [ -S /run/charon.vici ] && [ -S /run/nhrp-events.sock ]; do
        i=\$((i+1)); [ \$i -gt 300 ] && break; sleep 0.1; done
      # FRR >= 9: zebra is a backend of mgmtd; without it zebra 10.3 retries its closed
      # connection in a loop (19,000 log lines and a tenth of the guest's CPU each)
      if [ -x /usr/lib/frr/mgmtd ]; then
        mkdir -p /run/frr; chown frr:frr /run/frr
        /usr/lib/frr/mgmtd -i $d/mgmtd.pid --vty_socket $d -A 127.0.0.1 -P 0 \
          --log file:$LABOUT/$n/mgmtd.log > $LABOUT/$n/mgmtd.out 2>&1 &
        i=0; until [ -S /run/frr/mgmtd_be.sock ]; do i=\$((i+1)); [ \$i -gt 100 ] && break; sleep 0.1; done
      fi
      /usr/lib/frr/zebra -f $d/zebra.conf -i $d/zebra.pid -z $d/zserv.api \
        --vty_socket $d -A 127.0.0.1 -P 0 --log file:$LABOUT/$n/zebra.log > $LABOUT/$n/zebra.out 2>&1 &
      i=0; until [ -S $d/zserv.api ]; do i=\$((i+1)); [ \$i -gt 100 ] && break; sleep 0.1; done
      ( while :; do /usr/lib/frr/nhrpd -f $d/nhrpd.conf -i $d/nhrpd.pid -z $d/zserv.api \
          --vty_socket $d -A 127.0.0.1 -P 0 --log file:$LABOUT/$n/nhrpd.log --log-level debug;
        [ -f /tmp/lab/$n/norespawn ] && break; sleep 0.3; done ) > $LABOUT/$n/nhrpd.out 2>&1 &
    " </dev/null >$LABOUT/$n/wrap.out 2>&1 &
  }
  for n in $NODES; do start_stack $n; STARTING="$STARTING $!"; done
  # the four stacks start side by side: each waits only for its own sockets
  wait $STARTING
  echo "T stacks-started $(up)"
  PINGS=0
  ping_ok() { # from to: one ping, counted for the wire check
    PINGS=$((PINGS+1)); ip netns exec lab$1 ping -c1 -W1 $2 >/dev/null 2>&1
  }
  pingtest() { i=0; while [ $i -lt 20 ]; do ping_ok $1 $2 && return 0; i=$((i+1)); sleep 0.3; done; return 1; }

  # ---- 1. registration ------------------------------------------------------------
  hub_has() { vt hub 'show ip nhrp cache' | grep -E "^gre1 +dynamic +$1 " ; }
  # spoke1's shortcut to spoke2: pluto's Child SA, and the ESP frames between them
  direct_sa() { wk spoke1 --trafficstatus | grep -E '"dmvpn-198-51-100-12"|"dmvpn"\[[0-9]+\] 198\.51\.100\.12,'; }
  direct_esp() { tcpdump -nn -r /tmp/lab/wire.pcap 'ip proto 50 and host 198.51.100.11 and host 198.51.100.12' 2>/dev/null | wc -l; }
  nb() { n=$1; shift; ip netns exec lab$n env PYTHONPATH=$SRC $PY -m nhrpbridge "$@" \
           -c $LABOUT/$n/nhrpbridge.yaml 2>&1; }
  # 90 s each: in a slow guest run the hub's pluto once stalled 10 s at start-up (four
  # daemons starting at once on one CPU), spoke2's IKE_AUTH hit its 20 s retransmit
  # timeout and spoke2 registered 37 s after spoke1; correctness is checked, not speed
  if waitfor 90 hub_has 203.0.113.11 && waitfor 90 hub_has 203.0.113.12; then R1=PASS; else R1=FAIL; fi
  echo "T registration-checked $(up)"
  echo "=== hub: show ip nhrp cache"; vt hub 'show ip nhrp cache'
  echo "=== hub: show dmvpn"; vt hub 'show dmvpn'
  ACC=$(nblog hub | grep -c 'binding-accepted: GRE 203.0.113.1[12] ')
  INI=$(nblog spoke1 | grep -c 'initiate dmvpn -> 198.51.100.1: whack --initiate')
  nblog hub | grep 'binding-' | sed 's/^/  hub nhrpbridge: /'
  nblog spoke1 | grep 'initiate dmvpn' | sed 's/^/  spoke1 nhrpbridge: /'
  [ "$ACC" -ge 2 ] && [ "$INI" -ge 1 ] || R1=FAIL
  scenario registration $R1 "hub cache has 203.0.113.11+.12 as dynamic; $ACC bindings accepted by nhrpbridge; spoke1's nhrpd initiated via VICI ($INI whack calls)"

  if want shortcut; then
  # ---- 2. shortcut -----------------------------------------------------------------
  pingtest spoke1 203.0.113.1; pingtest spoke2 203.0.113.1
  echo "T shortcut-traffic-start $(up)"
  SC=FAIL; i=0
  while [ $i -lt 40 ]; do
    ping_ok spoke1 203.0.113.12
    rt=$(ip -n labspoke1 route get 203.0.113.12 2>&1 | head -1)
    case "$rt" in *via*) ;; *) direct_sa >/dev/null && { SC=PASS; break; };; esac
    i=$((i+1)); sleep 0.5
  done
  echo "T shortcut-route-direct $(up) ($SC)"
  E0=$(direct_esp)
  for k in 1 2 3 4 5 6 7 8 9 10; do ping_ok spoke1 203.0.113.12; ping_ok spoke2 203.0.113.11; done
  sleep 0.5
  E1=$(direct_esp)
  RT=$(ip -n labspoke1 route get 203.0.113.12 | head -1)
  case "$RT" in *via*) SC=FAIL;; esac
  [ "$E1" -ge $((E0 + 20)) ] || SC=FAIL          # the 20 later pings took the direct SA
  direct_sa >/dev/null || SC=FAIL
  echo "=== spoke1: route/neigh/traffic"; ip -n labspoke1 neigh show dev gre1
  wk spoke1 --trafficstatus; wk spoke1 --showstates; vt spoke1 'show ip nhrp shortcut'
  echo "=== spoke2: traffic"; wk spoke2 --trafficstatus; wk spoke2 --showstates
  for n in hub spoke1; do for w in showstates trafficstatus; do
    wk $n --$w > $LABOUT/$n/whack-$w.txt 2>&1; done; done
  scenario shortcut $SC "after 20 more pings: spoke1 route '$RT'; direct ESP frames $E0 -> $E1; direct SA: '$(direct_sa | head -1 | cut -c1-70)'"
  fi

  if want no-cleartext; then
  # ---- 5. no cleartext (over everything so far) -----------------------------------
  sleep 0.5
  GRE=$(tcpdump -nn -r /tmp/lab/wire.pcap 'ip proto 47' 2>/dev/null | wc -l)
  ESP=$(tcpdump -nn -r /tmp/lab/wire.pcap 'ip proto 50' 2>/dev/null | wc -l)
  D12=$(tcpdump -nn -r /tmp/lab/wire.pcap 'ip proto 50 and host 198.51.100.11 and host 198.51.100.12' 2>/dev/null | wc -l)
  [ "$GRE" -eq 0 ] && [ "$ESP" -ge "$PINGS" ] && [ "$D12" -gt 0 ] && R5=PASS || R5=FAIL
  scenario no-cleartext $R5 "bridge capture: cleartext GRE=$GRE, ESP=$ESP (>= $PINGS pings sent), direct spoke1<->spoke2 ESP=$D12"
  fi

  if [ "$LABAUTH" = cert ]; then   # (a PSK run: the base scenarios only)
  if want rekey; then
  # ---- 14. rekey: 150 s of pings spoke1 -> hub and spoke1 -> spoke2 (the shortcut) while
  # every SA rekeys (the lab's lifetimes: Child SAs 60 s, IKE SAs 150 s, margin 20 s): no
  # link may go down in nhrpbridge, no spoke's nhrpd may lose its NHS link, the hub's cache
  # must keep both spokes, at most 1 ping in 100 lost
  echo "T rekey-start $(up)"
  R14=PASS; W14=""
  for n in hub spoke1 spoke2; do
    eval "LD0_$n=\$(grep -c 'link-down seq' $LABOUT/$n/nhrpbridge.log)"
    eval "NL0_$n=\$(wc -l < $LABOUT/$n/nhrpd.log)"
    eval "PL0_$n=\$(wc -l < $LABOUT/$n/pluto.log)"
  done
  ip netns exec labspoke1 ping -c 300 -i 0.5 -W 1 203.0.113.1 > /tmp/lab/ping-rk-hub.txt 2>&1 &
  RP1=$!
  ip netns exec labspoke1 ping -c 300 -i 0.5 -W 1 203.0.113.12 > /tmp/lab/ping-rk-s2.txt 2>&1 &
  RP2=$!
  MINC=2
  while kill -0 $RP1 2>/dev/null; do
    c=$(vt hub 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[12] ')
    [ "$c" -lt "$MINC" ] && MINC=$c
    sleep 2
  done
  wait $RP1 $RP2
  echo "T rekey-end $(up)"
  since_mark() { tail -n +$(( $2 + 1 )) $LABOUT/$1/pluto.log; }
  # rekeys of each link, in the log of the end that names the peer by address
  CR1=$(since_mark hub $PL0_hub | grep -cE '198\.51\.100\.11 #[0-9]+: (initiator|responder) rekeyed Child SA')
  IR1=$(since_mark hub $PL0_hub | grep -cE '198\.51\.100\.11 #[0-9]+: (initiator|responder) rekeyed IKE SA')
  CR2=$(since_mark spoke2 $PL0_spoke2 | grep -cE '(198\.51\.100\.11|dmvpn-198-51-100-11") #[0-9]+: (initiator|responder) rekeyed Child SA')
  IR2=$(since_mark spoke2 $PL0_spoke2 | grep -cE '(198\.51\.100\.11|dmvpn-198-51-100-11") #[0-9]+: (initiator|responder) rekeyed IKE SA')
  LDS=""; for n in hub spoke1 spoke2; do
    eval "d=\$(( \$(grep -c 'link-down seq' $LABOUT/$n/nhrpbridge.log) - \$LD0_$n ))"
    [ "$d" -eq 0 ] || { R14=FAIL; W14="$W14 $n: $d link-down;"; }; LDS="$LDS $n=$d"; done
  NHW=""; for n in spoke1 spoke2; do
    eval "w=\$(tail -n +\$(( \$NL0_$n + 1 )) $LABOUT/$n/nhrpd.log | grep -ac 'NHS: Waiting link')"
    [ "$w" -eq 0 ] || { R14=FAIL; W14="$W14 $n nhrpd lost its NHS link $w times;"; }; NHW="$NHW $n=$w"; done
  RK1=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/lab/ping-rk-hub.txt)
  RK2=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/lab/ping-rk-s2.txt)
  [ "${RK1:-0}" -ge 297 ] && [ "${RK2:-0}" -ge 297 ] || { R14=FAIL; W14="$W14 pings ${RK1:-0}/300 and ${RK2:-0}/300;"; }
  [ "$MINC" -eq 2 ] || { R14=FAIL; W14="$W14 the hub's cache fell to $MINC spokes;"; }
  [ "$CR1" -ge 3 ] && [ "$CR2" -ge 3 ] || { R14=FAIL; W14="$W14 fewer than 3 Child SA rekeys per link;"; }
  [ "$IR1" -ge 1 ] && [ "$IR2" -ge 1 ] || { R14=FAIL; W14="$W14 no IKE SA rekey on a link;"; }
  scenario rekey $R14 "150 s, lifetimes 60 s/150 s, spoke2 without the log follower: spoke1<->hub $CR1 Child SA and $IR1 IKE SA rekeys (hub's pluto log), spoke1<->spoke2 $CR2 and $IR2 (spoke2's); link-downs in nhrpbridge:$LDS; spokes' nhrpd 'NHS: Waiting link':$NHW; hub cache kept >= $MINC spokes; pings ${RK1:-0}/300 to the hub, ${RK2:-0}/300 to spoke2;$W14"
  fi

  if want rekey-collision; then
  # ---- 19. rekey-collision: both ends of spoke1's hub link rekey at the same moment -----
  # whack at the hub and at spoke1 at once (4.x: --rekey-ipsec/--rekey-ike --name SERIAL;
  # 5.x: --rekey-child/--rekey-ike --name #SERIAL), the Child SA first, then the IKE SA,
  # while spoke1 pings the hub, with IKE between them held back for 1.5 s so that both
  # requests are outstanding at once. Both ends must log the rekey they initiated; PASS:
  # no link-down in either nhrpbridge, spoke1's nhrpd keeps its NHS link, the hub's cache
  # keeps spoke1, at most 1 of 80 pings lost.
  echo "T rekey-collision-start $(up)"
  R20=PASS; W20=""
  rk() { # node serial-or-conn ike|child: ask pluto for a rekey now, not waiting for it
    case "${PV%%.*}" in
      4) k=$([ $3 = ike ] && echo ike || echo ipsec); nm=$2;;
      *) k=$([ $3 = ike ] && echo ike || echo child); case $2 in [0-9]*) nm="#$2";; *) nm=$2;; esac;;
    esac
    ipsec whack --rundir /tmp/lab/$1/run --name "$nm" --rekey-$k --asynchronous 2>&1 | head -2 | tr '\n' ' '; }
  newest() { sort -n | tail -1; }
  LDC0_hub=$(grep -c 'link-down seq' $LABOUT/hub/nhrpbridge.log); LDC0_s1=$(grep -c 'link-down seq' $LABOUT/spoke1/nhrpbridge.log)
  NLC0=$(wc -l < $LABOUT/spoke1/nhrpd.log)
  PH0=$(wc -l < $LABOUT/hub/pluto.log); PS0=$(wc -l < $LABOUT/spoke1/pluto.log)
  ip netns exec labspoke1 ping -c 80 -i 0.25 -W 1 203.0.113.1 > /tmp/lab/ping-rc.txt 2>&1 &
  RPC=$!
  sleep 2
  HC=$(wk hub --trafficstatus | grep '198\.51\.100\.11,' | grep -o '#[0-9]*' | tr -d '#' | newest)
  HI=$(wk hub --showstates | grep -E '198\.51\.100\.11:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA' | grep -o '#[0-9]*' | tr -d '#' | newest)
  if [ -z "$HC" ] || [ -z "$HI" ]; then R20=FAIL; W20="$W20 no SA of spoke1 on the hub to rekey (child '$HC', IKE '$HI');"
  else
    # the guest's one CPU ran the two whacks one after the other, and the spoke's request
    # reached the hub before the hub's own whack (4.10: "not rekey stale Child SA"): no
    # collision. So IKE between the two is dropped while both start, and let through 1.5 s
    # later: each end's retransmitted request meets the other's, outstanding
    ikeblock() { ok=0; for p in 500 4500; do   # (needs xt_tcpudp)
        ip netns exec labhub iptables-legacy -$1 INPUT -s 198.51.100.11 -p udp --dport $p -j DROP || ok=1
        ip netns exec labhub iptables-legacy -$1 OUTPUT -d 198.51.100.11 -p udp --dport $p -j DROP || ok=1
      done; [ $ok = 0 ] || { R20=FAIL; W20="$W20 iptables could not hold IKE back ($1);"; }; }
    ikeblock I
    rk hub $HC child > /tmp/lab/rk1 & K1=$!; rk spoke1 dmvpn-198-51-100-1 child > /tmp/lab/rk2 & K2=$!
    wait $K1 $K2; sleep 1.5; ikeblock D
    sleep 8
    HI=$(wk hub --showstates | grep -E '198\.51\.100\.11:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA' | grep -o '#[0-9]*' | tr -d '#' | newest)
    ikeblock I
    rk hub ${HI:-0} ike > /tmp/lab/rk3 & K1=$!; rk spoke1 dmvpn-198-51-100-1 ike > /tmp/lab/rk4 & K2=$!
    wait $K1 $K2; sleep 1.5; ikeblock D
  fi
  wait $RPC
  echo "T rekey-collision-end $(up)"
  since_h() { tail -n +$(( PH0 + 1 )) $LABOUT/hub/pluto.log | grep -E '198\.51\.100\.11 #'; }
  since_s() { tail -n +$(( PS0 + 1 )) $LABOUT/spoke1/pluto.log | grep -E '"dmvpn-198-51-100-1" #'; }
  HIC=$(since_h | grep -c 'initiating rekey to replace Child SA'); SIC=$(since_s | grep -c 'initiating rekey to replace Child SA')
  HII=$(since_h | grep -c 'initiating rekey to replace IKE SA'); SII=$(since_s | grep -c 'initiating rekey to replace IKE SA')
  HDONE=$(since_h | grep -cE '(initiator|responder) rekeyed (Child|IKE) SA'); SDONE=$(since_s | grep -cE '(initiator|responder) rekeyed (Child|IKE) SA')
  [ "$HIC" -ge 1 ] && [ "$SIC" -ge 1 ] || { R20=FAIL; W20="$W20 not both ends initiated the Child SA rekey (hub $HIC, spoke1 $SIC);"; }
  [ "$HII" -ge 1 ] && [ "$SII" -ge 1 ] || { R20=FAIL; W20="$W20 not both ends initiated the IKE SA rekey (hub $HII, spoke1 $SII);"; }
  LDH=$(( $(grep -c 'link-down seq' $LABOUT/hub/nhrpbridge.log) - LDC0_hub )); LDS1=$(( $(grep -c 'link-down seq' $LABOUT/spoke1/nhrpbridge.log) - LDC0_s1 ))
  [ "$LDH" = 0 ] && [ "$LDS1" = 0 ] || { R20=FAIL; W20="$W20 link-downs: hub $LDH, spoke1 $LDS1;"; }
  NHWC=$(tail -n +$(( NLC0 + 1 )) $LABOUT/spoke1/nhrpd.log | grep -ac 'NHS: Waiting link')
  [ "$NHWC" = 0 ] || { R20=FAIL; W20="$W20 spoke1's nhrpd lost its NHS link $NHWC times;"; }
  hub_has 203.0.113.11 >/dev/null || { R20=FAIL; W20="$W20 spoke1 left the hub's cache;"; }
  RC=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/lab/ping-rc.txt)
  # libreswan 5.2 and 4.10, seen in lab runs: the end that answered the other's Child SA rekey
  # request installed the new SA and sent pings on it, but put its CREATE_CHILD_SA
  # response on the wire only when the request came again, 2 s later; until then the other
  # end had no inbound SA for them. An expected failure when that is what pluto's log and
  # the capture show, the lost pings fit in that wait and everything else held
  withheld() { # since-function: "SECONDS FROM TO", the longest such wait at that end
    $1 | awk '/responder rekeyed Child SA/ {split($3, a, ":"); t = a[1]*3600 + a[2]*60 + a[3]; ts = substr($3, 1, 15)}
      /CREATE_CHILD_SA request has duplicate Message ID [0-9]+; retransmitting response/ && t {
        split($3, a, ":"); d = a[1]*3600 + a[2]*60 + a[3] - t; t = 0    # (the next one only,
        if (d > m && d < 8) {m = d; from = ts; to = substr($3, 1, 15)}}      # within the retransmits)
      END {printf "%.1f %s %s\n", m + 0, from ? from : "-", to ? to : "-"}'; }
  resp_frames() { # from-ip to-ip t0 t1: IKE responses on the wire between those times
    tcpdump -nn -tttt -r /tmp/lab/wire.pcap "udp port 500 and src host $1 and dst host $2" 2>/dev/null |
      awk -v a=$3 -v b=$4 '$2 > a && $2 < b' | grep -c 'child_sa\[I\{0,1\}R\]'; }
  if [ "${RC:-0}" -lt 79 ]; then
    set -- $(withheld since_s); WW=$1; WF=$2; WT=$3; WA=198.51.100.11; WB=198.51.100.1; WE=spoke1
    set -- $(withheld since_h)
    if awk -v a=$1 -v b=$WW 'BEGIN{exit !(a > b)}'; then WW=$1; WF=$2; WT=$3; WA=198.51.100.1; WB=198.51.100.11; WE=hub; fi
    FR=$(resp_frames $WA $WB $WF $WT)
    LOST=$((80 - ${RC:-0}))
    if [ $R20 = PASS ] && [ "$FR" = 0 ] && awk -v w=$WW -v l=$LOST 'BEGIN{exit !(w >= 1 && l <= w * 4 + 2)}'; then
      R20=XFAIL; W20="$W20 pings ${RC:-0}/80: libreswan $PV at $WE answered the other end's Child SA rekey at $WF (its new SA in use) and sent that response only at $WT, when the request came again ($FR responses from it on the wire between): $LOST pings in those $WW s had no inbound SA at the other end;"
    else R20=FAIL; W20="$W20 pings ${RC:-0}/80 (the longest withheld rekey response: $WW s at $WE, $FR responses on the wire in it);"; fi
  fi
  since_h | grep -E 'rekey|TEMPORARY_FAILURE|collision' | cut -c1-200 | sed 's/^/  hub: /' | head -12
  since_s | grep -E 'rekey|TEMPORARY_FAILURE|collision' | cut -c1-200 | sed 's/^/  spoke1: /' | head -12
  scenario rekey-collision $R20 "hub (Child #$HC, IKE #$HI) and spoke1 rekeyed at once: rekeys initiated Child SA hub $HIC spoke1 $SIC, IKE SA hub $HII spoke1 $SII; rekeys completed (log lines) hub $HDONE spoke1 $SDONE; link-downs hub $LDH spoke1 $LDS1; spoke1 nhrpd 'NHS: Waiting link' $NHWC; hub cache '$(hub_has 203.0.113.11 | head -1 | cut -c1-60)'; pings ${RC:-0}/80; whack said: '$(cat /tmp/lab/rk1 /tmp/lab/rk2 /tmp/lab/rk3 /tmp/lab/rk4 2>/dev/null | tr '\n' ' ' | cut -c1-120)';$W20"
  fi

  fi

  if want forged-registration; then
  # ---- 4. forged registration --------------------------------------------------------
  waitfor 30 sh -c "grep -q 'binding-rejected: GRE 203.0.113.13 from NBMA 198.51.100.13' $LABOUT/hub/nhrpbridge.log"
  REJ=$(nblog hub | grep 'binding-rejected: GRE 203.0.113.13' | head -1)
  echo "  hub nhrpbridge: $REJ"
  # certificates: spoke3's names 203.0.113.99 only; PSK (IP IDs): the hub's policy
  # gre-prefix-by-peer-id allows ID 198.51.100.13 only 203.0.113.99/32
  if [ "$LABAUTH" = psk ]; then WHY4='is not in the prefixes allowed for'; CLAIM4="a PSK peer ID (198.51.100.13) allowed only 203.0.113.99/32"
  else WHY4='not in the subjectAltNames'; CLAIM4="a certificate for 203.0.113.99"; fi
  if [ -n "$REJ" ] && ! hub_has 203.0.113.13 >/dev/null && echo "$REJ" | grep -q "$WHY4"; then
    R4=PASS; else R4=FAIL; fi
  scenario forged-registration $R4 "spoke3 claims 203.0.113.13 with $CLAIM4: $(echo "$REJ" | sed 's/.*binding-rejected: //' | cut -c1-150); hub cache entry for .13: '$(hub_has 203.0.113.13 | head -1)'"
  fi

  if [ "$LABAUTH" = psk ] && want dual-hub; then
  # ---- 21. dual-hub (PSK runs): spoke1-3 have two NHS, hub (.1) and hub2 (.2) ----------
  # hub is stopped entirely (nhrpbridge, nhrpd, zebra, pluto --shutdown) for about 30 s: spoke ->
  # hub2 pings and the spoke1 <-> spoke2 shortcut must go on; hub back, both spokes must
  # register with it again (well within holdtime/3 = 2400 s: 120 s here) with no new IKE
  # SA to hub2 (the lab's 150 s lifetimes rekey IKE SAs all the time: a rekey is a
  # CREATE_CHILD_SA exchange, a new IKE SA an IKE_SA_INIT on the wire, counted below)
  echo "T dual-hub-start $(up)"
  R21=PASS; W21=""
  hub2_has() { vt hub2 'show ip nhrp cache' | grep -E "^gre1 +dynamic +$1 " ; }
  for s in 203.0.113.11 203.0.113.12; do
    waitfor 60 hub2_has $s || { R21=FAIL; W21="$W21 $s not registered with hub2;"; }; done
  # the shortcut: formed while both hubs are up (resolution goes through hub)
  pingtest spoke1 203.0.113.12; i=0
  until direct_sa >/dev/null && ! ip -n labspoke1 route get 203.0.113.12 | grep -q via; do
    ping_ok spoke1 203.0.113.12; i=$((i+1)); [ $i -ge 40 ] && break; sleep 0.5; done
  direct_sa >/dev/null || { R21=FAIL; W21="$W21 no spoke1 <-> spoke2 shortcut before the stop;"; }
  ike_init2() { tcpdump -nn -r /tmp/lab/wire.pcap 'host 198.51.100.2 and ((udp port 500 and udp[26] = 34) or (udp port 4500 and udp[8:4] = 0 and udp[30] = 34))' 2>/dev/null | wc -l; }
  NHS1=$(vt spoke1 'show ip nhrp nhs' | grep -cE '198\.51\.100\.[12] ')
  II0=$(ike_init2); E0=$(direct_esp)
  touch /tmp/lab/hub/norespawn /tmp/lab/hub/norespawn-pluto
  d=/tmp/lab/hub/frr
  kill $(cat $d/nhrpd.pid) $(cat $d/zebra.pid) $(cat $d/mgmtd.pid 2>/dev/null) $(cat /tmp/lab/hub/nb.pid) 2>/dev/null
  wk hub --shutdown >/dev/null 2>&1; TS=$(up)
  hub_gone() { ! pgrep -f "rundir /tmp/lab/hub/run" >/dev/null && ! kill -0 $(cat /tmp/lab/hub/nb.pid) 2>/dev/null &&
    ! kill -0 $(cat $d/nhrpd.pid) 2>/dev/null; }
  waitfor 20 hub_gone || { R21=FAIL; W21="$W21 hub's daemons still running 20 s after the stop;"; }
  echo "T dual-hub-hub-stopped $TS"
  # without hub: 40 rounds of pings, spoke1 -> hub2, spoke1 -> spoke2 and back
  P2H=0; P12=0; P21=0; k=0
  while [ $k -lt 40 ]; do
    ping_ok spoke1 203.0.113.2 && P2H=$((P2H+1)); ping_ok spoke1 203.0.113.12 && P12=$((P12+1))
    ping_ok spoke2 203.0.113.11 && P21=$((P21+1)); k=$((k+1)); sleep 0.5; done
  E1=$(direct_esp)
  C2=$(vt hub2 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[12] ')
  RT21=$(ip -n labspoke1 route get 203.0.113.12 | head -1)
  NHSD=$(vt spoke1 'show ip nhrp nhs' | grep -E '198\.51\.100\.[12] ' | tr -s ' ' | tr '\n' ';')
  [ $P2H -ge 39 ] || { R21=FAIL; W21="$W21 spoke1 -> hub2 pings $P2H/40;"; }
  [ $P12 -ge 39 ] && [ $P21 -ge 39 ] || { R21=FAIL; W21="$W21 shortcut pings $P12/40 and $P21/40;"; }
  [ $E1 -ge $((E0 + 2 * 78)) ] || { R21=FAIL; W21="$W21 direct spoke1<->spoke2 ESP frames $E0 -> $E1 (want 2 per ping);"; }
  case "$RT21" in *via*) R21=FAIL; W21="$W21 spoke1's route to spoke2 went back through a hub: '$RT21';";; esac
  [ "$C2" = 2 ] || { R21=FAIL; W21="$W21 hub2's cache had $C2 of the 2 spokes while hub was down;"; }
  # hub back: its daemons start as at the beginning; the spokes' nhrpbridge (initiate-retry)
  # and nhrpd bring their links up and register
  rm -f /tmp/lab/hub/norespawn /tmp/lab/hub/norespawn-pluto
  start_pluto hub; waitfor 20 wk hub --globalstatus || W21="$W21 hub's pluto slow to start;"
  TB=$(up); start_stack hub; wait $!
  echo "T dual-hub-hub-back $TB"
  for s in 203.0.113.11 203.0.113.12; do
    waitfor 120 hub_has $s || { R21=FAIL; W21="$W21 $s not registered with hub again in 120 s;"; }; done
  TR=$(up); echo "T dual-hub-registered-again $TR"
  sleep 3
  II1=$(ike_init2)
  [ "$II1" = "$II0" ] || { R21=FAIL; W21="$W21 $((II1 - II0)) IKE_SA_INIT frames to or from hub2 since the stop;"; }
  for s in 203.0.113.11 203.0.113.12; do hub2_has $s >/dev/null || { R21=FAIL; W21="$W21 $s left hub2's cache;"; }; done
  echo "T dual-hub-done $(up)"
  scenario dual-hub $R21 "hub stopped for $(awk -v a=$TS -v b=$TB 'BEGIN{printf "%.0f", b-a}') s: spoke1 -> hub2 pings $P2H/40, shortcut pings spoke1 -> spoke2 $P12/40 and back $P21/40 (direct ESP frames $E0 -> $E1, route '$(echo $RT21 | cut -c1-50)'), hub2's cache kept $C2/2 spokes; spoke1 nhrpd NHS: '$(echo "$NHSD" | cut -c1-160)'; hub back: both spokes in its cache $(awk -v a=$TB -v b=$TR 'BEGIN{printf "%.1f", b-a}') s after its daemons started; IKE_SA_INIT frames with hub2 since the stop: $((II1 - II0)) (before it: $II0); spoke1 had $NHS1 NHS entries;$W21"
  fi

  if [ "$LABAUTH" = cert ]; then   # (a PSK run: the base scenarios only)
  if want hitless-restart; then
  # ---- 8. hitless restart: `nhrpbridge restart` on the hub during pings --------------
  # nhrpd keeps its VICI connection (it logs "VICI: Connected" on every (re)connect and
  # resets every VC, deleting the dynamic cache, when it loses one): the count must not
  # move, the cache must keep both spokes, the pings must go on
  echo "T hitless-start $(up)"
  R8=PASS; W8=""
  VC0=$(grep -ac 'VICI: Connected' $LABOUT/hub/nhrpd.log)
  PID0=$(cat /tmp/lab/hub/nb.pid)
  C0=$(vt hub 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[12] ')
  ip netns exec labspoke1 ping -c 50 -i 0.2 -W 1 203.0.113.1 > /tmp/lab/ping-hitless.txt 2>&1 &
  PP=$!
  sleep 2
  HR=$(nb hub restart --json --timeout 120); HRC=$?
  echo "T hitless-restarted $(up)"
  wait $PP
  RX=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/lab/ping-hitless.txt)
  VC1=$(grep -ac 'VICI: Connected' $LABOUT/hub/nhrpd.log)
  PID1=$(cat /tmp/lab/hub/nb.pid)
  C1=$(vt hub 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[12] ')
  KEPT=$(nblog hub | grep -o 'restarted: [0-9]* listening sockets and [0-9]* of [0-9]* connections kept, seq [0-9]*' | tail -1)
  [ "$HRC" -eq 0 ] && echo "$HR" | grep -q '"restarted": true' || { R8=FAIL; W8="$W8 restart failed: $HR;"; }
  [ "$VC0" = "$VC1" ] || { R8=FAIL; W8="$W8 nhrpd reconnected to VICI ($VC0 -> $VC1);"; }
  [ "$PID0" = "$PID1" ] || { R8=FAIL; W8="$W8 the respawn loop started a new process;"; }
  [ "$C0" -eq 2 ] && [ "$C1" -eq 2 ] || { R8=FAIL; W8="$W8 hub cache entries $C0 -> $C1;"; }
  [ "${RX:-0}" -ge 49 ] || { R8=FAIL; W8="$W8 only ${RX:-0}/50 pings answered;"; }
  scenario hitless-restart $R8 "hub: nhrpbridge restart -> $(echo "$HR" | tr -d '\n' | cut -c1-100); nhrpd 'VICI: Connected' $VC0 -> $VC1; hub cache dynamic spokes $C0 -> $C1; pings spoke1->hub ${RX:-0}/50; '$KEPT';$W8"
  fi

  fi

  if want restarts || want crash-outage; then
  # ---- 6. restarts -------------------------------------------------------------------
  # nhrpd resets every VC when its VICI connection drops (nhrp_vc_reset), which deletes
  # the dynamic cache entries; at holdtime 7200 the spokes would register again only after
  # 40 minutes. The hub's nhrpbridge sees nhrpd's new session and, once nhrpd is back on
  # the event socket (it retries every 10 s) and 5 s later, terminates the links of the
  # spokes that registered before: they bring them up again and register at once.
  serials() { wk hub --showstates | grep -o '#[0-9]*: "dmvpn' | sort -u | tr '\n' ' '; }
  recoveries() { grep -c 'registration recovery: nhrpd has a new VICI session' $LABOUT/hub/nhrpbridge.log; }
  S0=$(serials)
  NB0=$(cat /tmp/lab/hub/nb.pid)
  RD0=$(grep -c ' ready: ' $LABOUT/hub/nhrpbridge.log)
  VCK0=$(grep -ac 'VICI: Connected' $LABOUT/hub/nhrpd.log)
  RC0=$(recoveries)
  kill -9 $NB0; TK=$(up)
  echo "T hub-nhrpbridge-killed $TK"
  # back = the new process said ready (the old api.sock file outlives a kill -9)
  waitfor 30 sh -c "[ \$(grep -c ' ready: ' $LABOUT/hub/nhrpbridge.log) -gt $RD0 ]"
  echo "T hub-nhrpbridge-back $(up)"
  R6=PASS; W6=""
  # (crash-outage: how long both spokes were missing from the hub's cache)
  if waitfor 20 sh -c "! vtysh --vty_socket /tmp/lab/hub/frr -c 'show ip nhrp cache' | grep -Eq '^gre1 +dynamic +203\.0\.113\.11 '"; then
    GONE="spoke1 seen missing from the cache at +$(awk -v a=$TK -v b=$(up) 'BEGIN{printf "%.1f", b-a}') s"
  else
    GONE="spoke1 not seen missing (back before the first look)"
  fi
  # 120 s: the measured figure is reported; recovery normally takes 25-55 s here, but a
  # guest pluto once stalled 17 s (no log line, whack --showstates unanswered) in the middle
  # of it and spoke1 then waited for nhrpd's registration retry: 90 s. Without recovery the
  # spokes would be back only after holdtime/3 = 2400 s.
  for s in 203.0.113.11 203.0.113.12; do
    waitfor 120 hub_has $s || { R6=FAIL; W6="$W6 $s not registered again after nhrpbridge kill;"; }; done
  TBACK=$(up); VCK1=$(grep -ac 'VICI: Connected' $LABOUT/hub/nhrpd.log)
  RC1=$(recoveries)
  REC1=$(grep 'registration recovery: nhrpd has a new VICI session' $LABOUT/hub/nhrpbridge.log | tail -1 | sed 's/.*session (it lost its registrations); //')
  [ "$RC1" -gt "$RC0" ] || { R6=FAIL; W6="$W6 no registration recovery after the kill;"; }
  pingtest spoke1 203.0.113.1 || { R6=FAIL; W6="$W6 spoke1->hub ping;"; }
  S1=$(serials)
  echo "T hub-nhrpbridge-restarted $(up) $W6"
  vt hub 'show dmvpn'
  kill $(cat /tmp/lab/hub/frr/nhrpd.pid); TN=$(up)
  echo "T hub-nhrpd-killed $TN"
  sleep 2
  waitfor 120 hub_has 203.0.113.11 && waitfor 60 hub_has 203.0.113.12 || { R6=FAIL; W6="$W6 spokes not re-registered after nhrpd restart;"; }
  TN1=$(up)
  RC2=$(recoveries)
  [ "$RC2" -gt "$RC1" ] || { R6=FAIL; W6="$W6 no registration recovery after the nhrpd restart;"; }
  pingtest spoke2 203.0.113.1 || { R6=FAIL; W6="$W6 spoke2->hub ping;"; }
  S2=$(serials)
  echo "T hub-nhrpd-restarted $(up) $W6"
  kill -9 $(cat /tmp/lab/spoke1/run/pluto.pid)
  echo "T spoke1-pluto-killed $(up)"
  waitfor 20 sh -c "grep -q 'link-down seq=[0-9]* dmvpn 198.51.100.11 -> 198.51.100.1 ' $LABOUT/spoke1/nhrpbridge.log" \
    || { R6=FAIL; W6="$W6 spoke1 nhrpbridge saw no link-down;"; }
  echo "T spoke1-link-down-seen $(up)"
  # a per-peer conn prints no peer address in --trafficstatus: match its name too
  waitfor 90 sh -c "ipsec whack --rundir /tmp/lab/spoke1/run --trafficstatus | grep -Eq '\"dmvpn-198-51-100-1\"|\"dmvpn\"\[[0-9]+\] 198.51.100.1,'" \
    || { R6=FAIL; W6="$W6 spoke1 SA to hub not back;"; }
  pingtest spoke1 203.0.113.1 || { R6=FAIL; W6="$W6 spoke1->hub after pluto restart;"; }
  echo "T spoke1-back $(up)"
  scenario restarts $R6 "holdtime 7200; hub nhrpbridge kill -9 and nhrpd restart: both spokes back in the hub's cache $(awk -v a=$TK -v b=$TBACK 'BEGIN{printf "%.1f", b-a}') s and $(awk -v a=$TN -v b=$TN1 'BEGIN{printf "%.1f", b-a}') s later through registration recovery ($REC1); hub IKE serials [$S0] -> [$S1] -> [$S2]; spoke1 pluto kill -> link-down -> SA back via nhrpd;$W6"
  # ---- 10. crash outage (no systemd here, so no fd store): measured, not hidden --------
  R10=PASS
  [ "$VCK1" -gt "$VCK0" ] && [ "$R6" = PASS ] || R10=FAIL
  scenario crash-outage $R10 "kill -9 of the hub's nhrpbridge without systemd: nhrpd reconnected its VICI socket ('VICI: Connected' $VCK0 -> $VCK1) and dropped the spokes ($GONE); both back in the hub's cache $(awk -v a=$TK -v b=$TBACK 'BEGIN{printf "%.1f", b-a}') s after the kill at holdtime 7200, by registration recovery (without it: up to 2400 s)"
  fi

  if [ "$LABAUTH" = cert ]; then   # (a PSK run: the base scenarios only)
  if want whack; then
  # ---- 7. whack: every whack form nhrpbridge uses, against this flavour's pluto ------
  echo "T whack-start $(up)"
  R7=PASS; W7=""
  PV=$(ipsec --version 2>&1 | sed -n 's/.*Libreswan U\{0,1\}\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
  nblog hub | grep -q "nhrpbridge.pluto: libreswan $PV\$" || { R7=FAIL; W7="$W7 version $PV not detected;"; }
  # --showstates/--trafficstatus parsed: nhrpbridge's view after a resync matches whack's
  # (one python start per step: each costs seconds in the guest)
  ike13() { ip netns exec labhub env PYTHONPATH=$SRC $PY -c 'from nhrpbridge.client import ApiClient
with ApiClient("/tmp/lab/hub/nb/api.sock") as c:
    c.request("resync")
    for i in c.request("list")["ike-sas"]:
        if i["remote-host"] == "198.51.100.13": print(i["uniqueid"], i.get("serial"))'; }
  # every established IKE SA to spoke3 (a slow guest sometimes leaves two: spoke3 gave up
  # on an IKE_AUTH the hub had answered late, and started again)
  # (IKE SAs rekey every ~2 minutes in the lab: both views are read again until they agree,
  # a rekey between the two reads being no disagreement; up to 90 s, as 4.10 once lost the
  # IKE SA to spoke3 in a Child SA rekey collision just before this scenario (message IDs
  # out of step, `response with Message ID 10 has no matching SA`; the hub deleted it on
  # liveness, spoke3 noticed 66 s later and its nhrpbridge brought the link up again)
  same13() {
    WS=$(wk hub --showstates | grep -E '198\.51\.100\.13.*ESTABLISHED_IKE_SA' \
         | sed -n 's/^\(000 \)\{0,1\}#\([0-9]*\):.*/\2/p' | sort -n | tr '\n' ' ')
    NS=$(ike13 | awk '{print $2}' | sort -n | tr '\n' ' ')
    [ -n "$WS" ] && [ "$NS" = "$WS" ]; }
  waitfor 90 same13 || { R7=FAIL; W7="$W7 hub IKE to .13: whack [$WS], nhrpbridge [$NS];"; }
  # terminate a connection (5.x --down, 4.x --terminate): spoke3 drops its link to the hub;
  # its nhrpd is stopped first, or it asks for the link again at once (seen in the lab)
  touch /tmp/lab/spoke3/norespawn; kill $(cat /tmp/lab/spoke3/frr/nhrpd.pid)
  T1=$(nb spoke3 terminate dmvpn --json)
  waitfor 10 sh -c "! ipsec whack --rundir /tmp/lab/spoke3/run --trafficstatus | grep -q type=ESP" \
    || { R7=FAIL; W7="$W7 spoke3 terminate left an SA;"; }
  # terminate one peer (the per-peer conn if any, and every IKE SA with it by serial): the
  # hub drops whatever is left with spoke3, stale SAs included
  T0=$(nb hub terminate dmvpn 198.51.100.13 --json)
  waitfor 30 sh -c "! ipsec whack --rundir /tmp/lab/hub/run --showstates | grep -q '198.51.100.13.*ESTABLISHED'" \
    || { R7=FAIL; W7="$W7 hub still has an SA with .13 after terminate by host;"; }
  # initiate from the hub (5.x: the template with --remote-host; 4.x: a per-peer conn)
  MARK=$(wc -l < $LABOUT/hub/pluto.log)
  I1=$(nb hub initiate dmvpn 198.51.100.13 --timeout 30 --json)
  waitfor 30 sh -c "tail -n +$MARK $LABOUT/hub/pluto.log | grep -q 'sent IKE_SA_INIT request to 198.51.100.13'" \
    || { R7=FAIL; W7="$W7 hub sent no IKE_SA_INIT to .13;"; }
  waitfor 30 sh -c "ipsec whack --rundir /tmp/lab/hub/run --trafficstatus | grep -q \"198.51.100.13\\|dmvpn-198-51-100-13\"" \
    || { R7=FAIL; W7="$W7 no hub SA to .13 after initiate;"; }
  FORM=$(nblog hub | grep -o "'--remote-host', '198.51.100.13'\|'--name', 'dmvpn-198-51-100-13', '--initiate'" | tail -1)
  # delete one IKE SA by serial (5.x --name #N --down, 4.x --deletestate N)
  U=$(ike13 | sort -n -k2 | tail -1); S=${U#* }; U=${U% *}
  T2=$(nb hub terminate dmvpn --ike-id "$U" --json)
  waitfor 10 sh -c "! ipsec whack --rundir /tmp/lab/hub/run --showstates | grep -q '#$S: '" \
    || { R7=FAIL; W7="$W7 IKE #$S still there after terminate --ike-id;"; }
  echo "  spoke3 terminate: $T1"; echo "  hub terminate by host: $T0"; echo "  hub initiate: $I1"
  echo "  hub terminate --ike-id $U: $T2"
  echo "T whack-done $(up)"
  scenario whack $R7 "libreswan $PV detected; hub IKE SAs to .13 whack [$WS] = nhrpbridge [$NS]; spoke3 terminate -> no SA; hub terminate by host -> none left; hub initiate ($FORM) -> IKE_SA_INIT sent, SA up; IKE #$S deleted by serial;$W7"
  fi

  fi

  if want loss; then
  # ---- 3. loss -----------------------------------------------------------------------
  # spoke2 is lost: its pluto dies and its kernel's SAs with it (as when the box goes; the
  # policies stay, so its GRE is dropped, not sent in clear). With pluto killed alone,
  # spoke2's kernel went on sending ESP, the hub saw traffic and ran no liveness check, and
  # noticed only when its IKE SA expired (one debian12 run: 91 s)
  # first, spoke2 must have a link to the hub to lose (one debian13 run's hub pluto crashed
  # at the end of the whack scenario and spoke2 was not back yet when it was killed)
  waitfor 60 sh -c "ipsec whack --rundir /tmp/lab/hub/run --trafficstatus | grep -q '198\.51\.100\.12.*type=ESP\|dmvpn-198-51-100-12.*type=ESP'" \
    || echo "  loss: the hub has no Child SA with spoke2 before the kill"
  touch /tmp/lab/spoke2/norespawn-pluto
  LDN0=$(nblog hub | grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.1 -> 198.51.100.12 ')
  PMARK3=$(( $(wc -l < $LABOUT/hub/pluto.log) + 1 ))
  kill -9 $(cat /tmp/lab/spoke2/run/pluto.pid)
  ip -n labspoke2 xfrm state flush
  echo "T spoke2-pluto-killed $(up)"
  R3=PASS; W3=""
  read -r t3 _ < /proc/uptime
  hub_ld() { [ $(grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.1 -> 198.51.100.12 ' $LABOUT/hub/nhrpbridge.log) -gt $LDN0 ]; }
  # pluto 4.10 runs no liveness check while an exchange is queued on the IKE SA ("request
  # pending"), and a queued exchange whose predecessor was abandoned is never sent: the hub
  # then notices only when the IKE SA expires (150 s here, hours by default). Seen in 2 of
  # about 12 debian12 runs, when the kill fell on a rekey. Waited for, and said, not hidden.
  if ! waitfor 60 hub_ld; then
    QD=$(tail -n +$PMARK3 $LABOUT/hub/pluto.log | grep -E '198\.51\.100\.12|dmvpn-198-51-100-12' | grep -E 'initiating (rekey|Child SA)|initiating.*CREATE_CHILD_SA' | tail -1)
    SENT=$(tail -n +$PMARK3 $LABOUT/hub/pluto.log | grep -E '198\.51\.100\.12|dmvpn-198-51-100-12' | grep -cE 'sent CREATE_CHILD_SA|retransmission|timeout exceeded|liveness')
    if [ -n "$QD" ] && [ "$SENT" = 0 ] && waitfor 160 hub_ld; then
      W3="late: the hub's pluto ran no liveness check (a queued exchange never sent: '$(echo "$QD" | cut -c1-110)'), so it noticed when the IKE SA expired;"
    else R3=FAIL; W3="no link-down on the hub (queued exchange: '${QD:-none}', sent/retransmitted/liveness lines after the kill: $SENT);"; fi
  fi
  read -r t _ < /proc/uptime; DT3=$(awk -v a=$t3 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  echo "T hub-link-down $(up)"
  LD=$(nblog hub | grep 'link-down seq=[0-9]* dmvpn 198.51.100.1 -> 198.51.100.12 ' | tail -1)
  LV=$(tail -n +$PMARK3 $LABOUT/hub/pluto.log | grep -E 'timeout exceeded|liveness|expired' | grep -E '198\.51\.100\.12|dmvpn-198-51-100-12' | tail -1)
  waitfor 90 sh -c "! vtysh --vty_socket /tmp/lab/hub/frr -c 'show ip nhrp cache' | grep -q ' 203.0.113.12 '" \
    || { R3=FAIL; W3="$W3 hub nhrpd kept 203.0.113.12;"; }
  echo "T hub-cache-cleared $(up)"
  scenario loss $R3 "link-down on the hub $DT3 s after the kill; hub pluto: '$(echo "$LV" | cut -c1-140)'; hub nhrpbridge: '$(echo "$LD" | cut -c1-120)'; hub cache entry for .12: '$(hub_has 203.0.113.12 | head -1)' $W3"
  fi

  if [ "$LABAUTH" = cert ]; then   # (a PSK run: the base scenarios only)
  if want hub-outage; then
  # ---- 9. hub outage (last: it leaves stale IKE SAs behind that would disturb the others):
  # the hub unreachable for longer than per-peer-idle (20 s here) and initiate-retry (10 s
  # here), then back: spoke1 (spoke2's pluto is gone since `loss`) keeps its link to the
  # NHS wanted (nhrpbridge initiates it again) and is registered again within 60 s
  echo "T outage-start $(up)"
  R9=PASS; W9=""
  K0=$(nblog spoke1 | grep -c 'is down: initiating it again')
  DEL0=$(nblog spoke1 | grep -c 'per-peer conn dmvpn-198-51-100-1 deleted')
  LD0=$(grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.11 -> 198.51.100.1 ' $LABOUT/spoke1/nhrpbridge.log)
  BA0=$(nblog hub | grep -c 'binding-accepted: GRE 203.0.113.11 ')
  ip link set v-hub down; TD=$(up)
  waitfor 60 sh -c "[ \$(grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.11 -> 198.51.100.1 ' $LABOUT/spoke1/nhrpbridge.log) -gt $LD0 ]" \
    || { R9=FAIL; W9="$W9 spoke1 saw no link-down;"; }
  echo "T outage-spoke1-link-down $(up)"
  sleep 35                                  # > per-peer-idle + initiate-retry, link down
  ip link set v-hub up
  TB=$(up); echo "T outage-hub-back $TB"
  OK9=""
  # registered again = a new registration nhrpbridge authorized, and the entry is there
  waitfor 60 sh -c "[ \$(grep -c 'binding-accepted: GRE 203.0.113.11 ' $LABOUT/hub/nhrpbridge.log) -gt $BA0 ] && vtysh --vty_socket /tmp/lab/hub/frr -c 'show ip nhrp cache' | grep -Eq '^gre1 +dynamic +203\.0\.113\.11 '" \
    && OK9=1 || { R9=FAIL; W9="$W9 spoke1 not registered again within 60 s;"; }
  TR=$(up); echo "T outage-registered $TR"
  K1=$(nblog spoke1 | grep -c 'is down: initiating it again')
  DEL=$(( $(nblog spoke1 | grep -c 'per-peer conn dmvpn-198-51-100-1 deleted') - DEL0 ))
  [ "$DEL" -eq 0 ] || { R9=FAIL; W9="$W9 spoke1 deleted its per-peer conn to the hub;"; }
  [ "$K1" -gt "$K0" ] || { R9=FAIL; W9="$W9 spoke1's nhrpbridge never initiated the hub link again;"; }
  pingtest spoke1 203.0.113.1 || { R9=FAIL; W9="$W9 spoke1->hub ping;"; }
  scenario hub-outage $R9 "hub unreachable for $(awk -v a=$TD -v b=$TB 'BEGIN{printf "%.0f", b-a}') s; spoke1 nhrpbridge re-initiated the hub link $((K1 - K0)) times; per-peer conn deletions $DEL; spoke1 in the hub cache $(awk -v a=$TB -v b=$TR 'BEGIN{printf "%.1f", b-a}') s after the hub came back;$W9"
  fi

  if want peers; then
  # ---- 11. peers: `nhrpbridge status --peers` on the hub, joined with nhrpd's cache -----
  # spoke2's pluto is back first (gone since `loss`): its nhrpbridge brings its NHS link up
  rm -f /tmp/lab/spoke2/norespawn-pluto; start_pluto spoke2
  echo "T spoke2-pluto-back $(up)"
  R11=PASS; W11=""
  waitfor 90 hub_has 203.0.113.12 || { R11=FAIL; W11="$W11 spoke2 not registered again;"; }
  echo "T spoke2-registered-again $(up)"
  pingtest spoke1 203.0.113.1; pingtest spoke2 203.0.113.1
  echo "=== hub: nhrpbridge status --peers"
  nb hub status --peers --vty-socket /tmp/lab/hub/frr | tee /tmp/lab/peers.txt
  PJ=$(nb hub status --peers --json --vty-socket /tmp/lab/hub/frr)
  echo "$PJ" > $LABOUT/hub/peers.json
  PEERS_OK=$(echo "$PJ" | $PY -c '
import json, sys
d = json.load(sys.stdin)
ok = [p["nbma"] for p in d["peers"] if p["link"] == "up" and p["nhrp-type"] == "dynamic"
      and p["binding"] == "accept" and p["ike-serials"] and p["children"] >= 1
      and p["gre-address"] == "203.0.113." + p["nbma"].rsplit(".", 1)[1]]
print(" ".join(sorted(ok)), "|", d["nhrpd"])')
  case "$PEERS_OK" in "198.51.100.11 198.51.100.12 | ok") ;; *) R11=FAIL; W11="$W11 joined view: '$PEERS_OK';";; esac
  scenario peers $R11 "hub status --peers: link up + IKE serial + nhrpd dynamic entry + accepted binding for [$PEERS_OK]; $(grep -E '^198\.51\.100\.11 ' /tmp/lab/peers.txt | tr -s ' ' | cut -c1-120);$W11"
  fi

  if want revocation; then
  # ---- 12. revocation: a CRL revoking spoke2 dropped into the hub's store + reload ---
  R12=PASS; W12=""
  # spoke1 untouched: no link-down for it in the hub's nhrpbridge (its serials may change:
  # SAs rekey every minute in the lab)
  L1A=$(grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.1 -> 198.51.100.11 ' $LABOUT/hub/nhrpbridge.log)
  ip netns exec labspoke1 ping -c 40 -i 0.5 -W 1 203.0.113.1 > /tmp/lab/ping-revocation.txt 2>&1 &
  PR=$!
  sleep 1
  cp $LABOUT/pki/crl-spoke2.pem $LABOUT/pki/store/
  MARK=$(wc -l < $LABOUT/hub/pluto.log)
  TC=$(up)
  RL=$(nb hub reload --json)
  TR0=$(up)            # the reload applied (the CLI's python start took the time before)
  # cut off: the hub's pluto deleted its IKE SA with spoke2 (its log), or has none (whack);
  # spoke2 may come back (pluto does not know the CRL): each time its IKE SA is terminated
  # again and its registration refused
  spoke2_cut() { tail -n +$MARK $LABOUT/hub/pluto.log | grep -Eq '198\.51\.100\.12 #[0-9]+: deleting (state|IKE SA)|deleting connection instance with peer 198\.51\.100\.12' \
          || ! wk hub --showstates | grep -q '198.51.100.12.*ESTABLISHED_IKE_SA'; }
  waitfor 30 spoke2_cut || { R12=FAIL; W12="$W12 hub kept an IKE SA with spoke2 for 30 s;"; }
  # how long it took, by the two programs' own clocks: nhrpbridge's reload line, pluto's
  # deletion line (the guest shell's timing includes python starts of several seconds)
  RLT=$(nblog hub | grep 'nhrpbridge: reloaded: ' | tail -1 | awk '{print $2}' | tr , .)
  # the first deletion at or after the reload (MARK comes seconds before it: a debian12 run
  # counted a half-open IKE SA pluto dropped 3.7 s before the reload)
  PDEL=$(tail -n +$MARK $LABOUT/hub/pluto.log | grep -E '198\.51\.100\.12 #[0-9]+: deleting (state|IKE SA)' |
    awk -v r="$RLT" '{split(r, a, ":"); split($3, b, ":"); d = (b[1]*3600 + b[2]*60 + b[3]) - (a[1]*3600 + a[2]*60 + a[3])
      if (d < -43200) d += 86400; if (d >= 0) {print; exit}}')
  TCUT=$(echo "$RLT ${PDEL:+$(echo "$PDEL" | awk '{print $3}')}" | awk '{
    split($1, a, ":"); split($2, b, ":"); if ($2 == "") { print "none"; exit }
    d = (b[1]*3600 + b[2]*60 + b[3]) - (a[1]*3600 + a[2]*60 + a[3]); if (d < -43200) d += 86400
    printf "%.1f", d }')
  case "$TCUT" in none|-*) R12=FAIL; W12="$W12 no IKE SA deletion after the reload in pluto's log;";;
    *) awk -v t=$TCUT 'BEGIN{exit !(t <= 10)}' || { R12=FAIL; W12="$W12 cut off after $TCUT s (> 10);"; };; esac
  PDEL=$(echo "$PDEL" | cut -c1-130)
  echo "T revocation-cut $(up)"
  TGONE="not within 60 s"
  waitfor 60 sh -c "! vtysh --vty_socket /tmp/lab/hub/frr -c 'show ip nhrp cache' | grep -q ' 203.0.113.12 '" \
    && TGONE="$(awk -v a=$TR0 -v b=$(up) 'BEGIN{printf "%.1f", b-a}') s" || { R12=FAIL; W12="$W12 hub nhrpd kept 203.0.113.12;"; }
  P2=0; for k in 1 2 3 4 5; do ping_ok spoke2 203.0.113.1 && P2=$((P2+1)); sleep 0.5; done
  [ "$P2" -eq 0 ] || { R12=FAIL; W12="$W12 spoke2->hub $P2/5 pings answered after the revocation;"; }
  wait $PR
  RX1=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/lab/ping-revocation.txt)
  L1B=$(grep -c 'link-down seq=[0-9]* dmvpn 198.51.100.1 -> 198.51.100.11 ' $LABOUT/hub/nhrpbridge.log)
  [ "${RX1:-0}" -ge 39 ] || { R12=FAIL; W12="$W12 spoke1->hub only ${RX1:-0}/40 pings;"; }
  [ "$L1A" = "$L1B" ] || { R12=FAIL; W12="$W12 spoke1's link went down $((L1B - L1A)) times;"; }
  hub_has 203.0.113.11 >/dev/null || { R12=FAIL; W12="$W12 spoke1 left the hub cache;"; }
  REVL=$(nblog hub | grep 'nhrpbridge.revocation' | head -1 | sed 's/.*revocation: //' | cut -c1-160)
  REJ2=$(nblog hub | grep 'binding-rejected: GRE 203.0.113.12 .*revoked' | tail -1 | sed 's/.*binding-rejected: //' | cut -c1-120)
  echo "  hub reload: $RL"
  scenario revocation $R12 "CRL for spoke2 + reload ($(awk -v a=$TC -v b=$TR0 'BEGIN{printf "%.1f", b-a}') s for the CLI): hub pluto '$PDEL' $TCUT s after nhrpbridge's reload (both logs' clocks), nhrpd's cache entry gone $TGONE after the CLI returned; spoke2->hub pings after: $P2/5; hub log: '$REVL'; later binding: '${REJ2:-none asked}'; spoke1: ${RX1:-0}/40 pings, link-downs $((L1B - L1A));$W12"
  fi

  if want metrics; then
  # ---- 13. metrics: the hub's /metrics, scraped once, against its log since it started --
  # counters start at 0 with each process (the kill -9 in `restarts` started a new one,
  # `restart` exec'd one): log lines are counted from the last ' ready: ', before and after.
  # Rejections as revoked may be 0: whether spoke2's nhrpd asks again before the hub cuts
  # its new IKE SA is a race (a faster run saw 'none asked'); terminations are never 0.
  R13=PASS; W13=""
  since() { nblog hub | awk -v p="$1" '/ ready: / {n = 0} $0 ~ p {n++} END {print n + 0}'; }
  B0=""; for p in "binding-accepted:" "binding-rejected: .*revoked" "revocation: IKE SA .* terminated"; do B0="$B0 $(since "$p")"; done
  ip netns exec labhub $PY -c '
import urllib.request
req = urllib.request.Request("http://127.0.0.1:9108/metrics",
                             headers={"Accept": "application/openmetrics-text; version=1.0.0"})
with urllib.request.urlopen(req, timeout=10) as r:
    print(r.headers["Content-Type"])
    print(r.read().decode())' > $LABOUT/hub/metrics.txt 2>&1 || { R13=FAIL; W13="$W13 scrape failed;"; }
  B1=""; for p in "binding-accepted:" "binding-rejected: .*revoked" "revocation: IKE SA .* terminated"; do B1="$B1 $(since "$p")"; done
  msum() { awk -v p="$1" 'index($1, p) == 1 {s += $2} END {print s + 0}' $LABOUT/hub/metrics.txt; }
  head -1 $LABOUT/hub/metrics.txt | grep -q openmetrics-text || { R13=FAIL; W13="$W13 not OpenMetrics;"; }
  M=" $(msum 'nhrpbridge_bindings_total{decision="accept"') $(msum 'nhrpbridge_bindings_total{decision="reject",reason="revoked"}') $(msum 'nhrpbridge_terminations_total{cause="revocation"}')"
  set -- $B0; a0=$1 r0=$2 t0=$3; set -- $B1; a1=$1 r1=$2 t1=$3; set -- $M; ma=$1 mr=$2 mt=$3
  [ "$ma" -ge "$a0" ] && [ "$ma" -le "$a1" ] || { R13=FAIL; W13="$W13 accepted $ma vs log $a0..$a1;"; }
  [ "$mr" -ge "$r0" ] && [ "$mr" -le "$r1" ] || { R13=FAIL; W13="$W13 rejected as revoked $mr vs log $r0..$r1;"; }
  [ "$mt" -ge "$t0" ] && [ "$mt" -le "$t1" ] && [ "$mt" -ge 1 ] || { R13=FAIL; W13="$W13 revocation terminations $mt vs log $t0..$t1;"; }
  grep -q '^nhrpbridge_initiate_seconds_bucket' $LABOUT/hub/metrics.txt || { R13=FAIL; W13="$W13 no initiate histogram;"; }
  grep -q '^nhrpbridge_links{connection="dmvpn",state="up"} [1-9]' $LABOUT/hub/metrics.txt || { R13=FAIL; W13="$W13 no link up;"; }
  grep -E '^nhrpbridge_(links|bindings_total|terminations_total|whack_failures_total|vici_clients|spool_backlog|log_follower_lag_bytes|reconcile_last)' $LABOUT/hub/metrics.txt | sed 's/^/  hub metrics: /'
  scenario metrics $R13 "hub /metrics scraped (OpenMetrics): bindings accepted $ma (hub log since this process started: $a0..$a1), rejected as revoked $mr (log: $r0..$r1), IKE SAs terminated for revocation $mt (log: $t0..$t1); $(grep '^nhrpbridge_links{' $LABOUT/hub/metrics.txt | tr '\n' ' ');$W13"
  fi

  if want nat; then
  # ---- 14. nat: spoke4 behind a MASQUERADE router (192.0.2.14 inside, 198.51.100.20 out) --
  # its stack starts only now: the scenarios above count on the three spokes
  echo "T nat-start $(up)"
  R14=PASS; W14=""
  start_pluto spoke4
  waitfor 20 wk spoke4 --globalstatus || W14="$W14 spoke4's pluto slow to start;"
  start_stack spoke4; wait $!
  NODES="$NODES spoke4"                 # shut down and collected with the others
  waitfor 120 hub_has 203.0.113.14 || { R14=FAIL; W14="$W14 spoke4 not in the hub's cache;"; }
  echo "T nat-registered $(up)"
  C4=$(hub_has 203.0.113.14 | head -1); set -- $C4 x x x x x; NB4=$4; CL4=$5
  [ "$NB4" = 198.51.100.20 ] || { R14=FAIL; W14="$W14 hub's cache has NBMA '$NB4' for spoke4 (want the NAT's 198.51.100.20);"; }
  BA4=$(nblog hub | grep 'binding-accepted: GRE 203.0.113.14 ' | tail -1 | sed 's/.*binding-accepted: //' | cut -c1-120)
  [ -n "$BA4" ] || { R14=FAIL; W14="$W14 no accepted binding for 203.0.113.14;"; }
  ENC=$(ip -n labhub xfrm state | grep -A6 '^src 198.51.100.20 ' | grep -c 'encap type espinudp')
  [ "$ENC" -ge 1 ] || { R14=FAIL; W14="$W14 no ESP-in-UDP state from 198.51.100.20 on the hub;"; }
  P4H=0; i=0; while [ $i -lt 20 ]; do ping_ok spoke4 203.0.113.1 && P4H=$((P4H+1)); i=$((i+1)); done
  # spoke4 -> spoke1: the first 30 pings go through the hub while nhrpd resolves the shortcut
  # (spoke4 initiates it: the NAT lets nothing in); the 20 later ones must all arrive, over
  # the direct SA when there is one (ESP in UDP between spoke1 and the NAT's address)
  P41=0; i=0; while [ $i -lt 30 ]; do ping_ok spoke4 203.0.113.11 && P41=$((P41+1)); i=$((i+1)); sleep 0.2; done
  nat_esp() { tcpdump -nn -r /tmp/lab/wire.pcap 'udp port 4500 and udp[8:4] != 0 and host 198.51.100.11 and host 198.51.100.20' 2>/dev/null | wc -l; }
  N0=$(nat_esp); L41=0
  for k in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do ping_ok spoke4 203.0.113.11 && L41=$((L41+1)); done
  # the capture lags the pings on a busy guest (a run with both flavours side by side
  # counted 38 of 40 after a fixed 0.5 s): wait up to 5 s for the frames to be written
  nat_esp_all() { [ "$(nat_esp)" -ge $((N0 + 40)) ]; }
  waitfor 5 nat_esp_all; N1=$(nat_esp)
  [ $P4H -ge 19 ] || { R14=FAIL; W14="$W14 spoke4->hub $P4H/20 pings;"; }
  [ $L41 = 20 ] || { R14=FAIL; W14="$W14 spoke4->spoke1 later pings $L41/20;"; }
  CLR=$(tcpdump -nn -r /tmp/lab/wire.pcap 'ip proto 47 and host 198.51.100.20' 2>/dev/null | wc -l)
  [ "$CLR" = 0 ] || { R14=FAIL; W14="$W14 $CLR cleartext GRE frames to or from the NAT;"; }
  SC=$(wk spoke1 --trafficstatus 2>&1 | grep -c '198.51.100.20')
  [ "$SC" = 0 ] || [ "$N1" -ge $((N0 + 40)) ] || { R14=FAIL; W14="$W14 the direct spoke1 SA carried $((N1 - N0)) ESP-in-UDP frames of the 20 later pings (want 40);"; }
  wk hub --trafficstatus 2>&1 | grep '198.51.100.20' | cut -c1-200 | sed 's/^/  hub trafficstatus: /'
  # what another VICI client sees: strongSwan's swanctl on the hub's and spoke4's sockets
  # (reached through the nhrpbridge process's own /run)
  swsa() { # node remote-host: the NAT keys of that IKE SA in `swanctl --list-sas --raw`
    swanctl --list-sas --raw --uri "unix:///proc/$(cat /tmp/lab/$1/nb.pid)/root/run/charon.vici" \
      2>&1 | grep "remote-host=$2 " | head -1 | grep -o 'remote-port=[0-9]*\|local-port=[0-9]*\|nat-[a-z]*=yes\|encap=yes' | sort -u | tr '\n' ' '; }
  SWH=$(swsa hub 198.51.100.20); SW4=$(swsa spoke4 198.51.100.1)
  for k in nat-remote=yes encap=yes remote-port=4500 local-port=4500; do
    case " $SWH" in *" $k "*) ;; *) R14=FAIL; W14="$W14 hub's swanctl lacks $k;";; esac; done
  for k in nat-local=yes encap=yes; do
    case " $SW4" in *" $k "*) ;; *) R14=FAIL; W14="$W14 spoke4's swanctl lacks $k;";; esac; done
  echo "T nat-done $(up)"
  scenario nat $R14 "hub's cache: '$(echo $C4 | cut -c1-90)' (NBMA $NB4, claimed $CL4); hub binding '$BA4'; hub ESP-in-UDP states from 198.51.100.20: $ENC; pings spoke4->hub $P4H/20, spoke4->spoke1 $P41/30 while the shortcut forms and $L41/20 later (direct spoke1 SAs with the NAT's address: $SC, ESP-in-UDP frames spoke1<->NAT $N0 -> $N1); cleartext GRE to or from the NAT: $CLR; swanctl on the hub: $SWH; on spoke4: $SW4;$W14"
  fi

  if want nat-rebind; then
  # ---- 16. nat-rebind: the NAT's outside address changes (198.51.100.20 -> .21) ---------
  # as when an LTE or PPPoE router gets a new address: MASQUERADE drops the mappings of the
  # address it loses; spoke4 goes on pinging the hub. PASS: the hub's cache has spoke4 at
  # .21 within 30 s and, then, nothing points at .20 (pluto's SAs, the kernel's states,
  # nhrpbridge's links, nhrpd's cache). XFAIL only when spoke4 did come back at .21 with
  # nothing left at .20, later than 30 s, and pluto's logs show why: spoke4's IKE SA to the
  # hub died unanswered (liveness) after the change, while the hub logged that it ignores
  # the endpoint change (5.x) or answered spoke4's retransmissions at .20 (4.x).
  echo "T nat-rebind-start $(up)"
  R15=PASS; W15=""
  hub_nbma_is() { want=$2; set -- $(hub_has $1 | head -1) x x x x; [ "$4" = "$want" ]; }
  old_gone() { ! ip -n labhub xfrm state | grep -qE '198\.51\.100\.20( |$)' &&
    ! wk hub --trafficstatus 2>&1 | grep -q '198\.51\.100\.20,' &&
    ! nb hub status --json 2>&1 | grep -q '"198\.51\.100\.20"' && ! hub_has 203.0.113.14 | grep -q '198\.51\.100\.20 '; }
  # (without promote_secondaries, deleting the primary address takes .21 with it: the first
  # run of this scenario left the NAT router without an outside address)
  ip netns exec labnat sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1
  dups_at_20() { grep -c '198\.51\.100\.20 #[0-9]*: INFORMATIONAL request has duplicate Message ID' $LABOUT/hub/pluto.log; }
  s4_unanswered() { grep -cE '(dmvpn-198-51-100-1"|"\[[0-9]+\] 198\.51\.100\.1) #[0-9]+: .*No response \(or no acceptable response\) to our [A-Za-z0-9_]+ message' $LABOUT/spoke4/pluto.log; }
  hub_re20() { grep -cE '198\.51\.100\.20 #[0-9]+: [A-Z_0-9]+: retransmission; will wait' $LABOUT/hub/pluto.log; }
  DUPB=$(dups_at_20); UNB=$(s4_unanswered); REB=$(hub_re20)
  # where each log stood: a run that is not a clear PASS prints what followed
  M15=""; for f in spoke4/pluto.log hub/pluto.log spoke4/nhrpbridge.log spoke4/nhrpd.log; do
    M15="$M15 $(wc -l < $LABOUT/$f)"; done
  ip -n labnat addr add 198.51.100.21/24 dev eth0
  ip -n labnat addr del 198.51.100.20/24 dev eth0
  # MASQUERADE's own clean-up of the lost address's mappings is deferred; one run kept
  # translating spoke4's flows to .20 after the change. A router that changes its address
  # starts with no mappings: flush them (conntrack-tools)
  ip netns exec labnat conntrack -F >/dev/null 2>&1 || { R15=FAIL; W15="$W15 conntrack -F failed in the NAT router;"; }
  ip -n labnat -4 addr show dev eth0 | grep -q 'inet 198\.51\.100\.21/' || { R15=FAIL; W15="$W15 the NAT router lost its new address;"; }
  read -r t15 _ < /proc/uptime
  ( i=0; while [ $i -lt 100 ]; do ip netns exec labspoke4 ping -c1 -W1 203.0.113.1 >/dev/null 2>&1
      i=$((i+1)); sleep 0.5; done ) >/dev/null 2>&1 &
  PG15=$!
  if waitfor 90 hub_nbma_is 203.0.113.14 198.51.100.21; then
    read -r t _ < /proc/uptime; DT15=$(awk -v a=$t15 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  else DT15="none in 90"; fi
  echo "T nat-rebind-new-nbma $(up)"
  [ "$DT15" = "none in 90" ] || waitfor 60 old_gone     # (not back at .21: no use waiting)
  read -r t _ < /proc/uptime; DG15=$(awk -v a=$t15 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  kill $PG15 2>/dev/null
  STALE=""
  ip -n labhub xfrm state | grep -qE '198\.51\.100\.20( |$)' && STALE="$STALE kernel-states"
  wk hub --trafficstatus 2>&1 | grep -q '198\.51\.100\.20,' && STALE="$STALE pluto-child-sas"
  nb hub status --json 2>&1 | grep -q '"198\.51\.100\.20"' && STALE="$STALE nhrpbridge-records"
  hub_has 203.0.113.14 | grep -q '198\.51\.100\.20 ' && STALE="$STALE nhrpd-cache"
  IGN=$(grep -c 'ignoring peer endpoint change from 198.51.100.20:[0-9]* to 198.51.100.21' $LABOUT/hub/pluto.log)
  # what the hub sent to the new address (the capture): pluto 4.x answers a request where it
  # came from, whatever the IKE SA's endpoint
  TO21=$(tcpdump -nn -r /tmp/lab/wire.pcap 'udp port 4500 and src host 198.51.100.1 and dst host 198.51.100.21' 2>/dev/null | wc -l)
  IKE21=$(wk hub --showstates 2>&1 | grep -cE '198\.51\.100\.21:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA')
  DUPS=$(( $(dups_at_20) - DUPB )); UNANS=$(( $(s4_unanswered) - UNB )); HRE=$(( $(hub_re20) - REB ))
  C15=$(hub_has 203.0.113.14 | head -1 | cut -c1-90)
  case "$DT15" in none*) FAST=0;; *) FAST=$(awk -v d=$DT15 'BEGIN{print (d <= 30) ? 1 : 0}');; esac
  if [ -n "$STALE" ] && [ "${PV%%.*}" = 4 ] && [ "$TO21" -ge 1 ] && [ "$UNANS" = 0 ] && [ "$DT15" = "none in 90" ]; then
    R15=XFAIL; W15="$W15 libreswan $PV: the hub's pluto answered spoke4's new requests at .21 ($TO21 frames to .21 in the capture), so spoke4's IKE SA lived on, while the hub's IKE SA endpoint, kernel SAs and Child SAs stayed at .20 (libreswan issue 1645): stuck at .20:$STALE;"
  elif [ -n "$STALE" ]; then R15=FAIL; W15="$W15 still pointing at .20:$STALE;"
  elif [ $FAST = 1 ]; then R15=PASS
  elif [ "$DT15" = "none in 90" ]; then R15=FAIL; W15="$W15 spoke4 not back at .21 in 90 s;"
  elif [ "$UNANS" -ge 1 ] && [ "$IGN" -ge 1 ]; then R15=XFAIL; W15="$W15 libreswan $PV (no MOBIKE): the hub's pluto ignored the endpoint change, its answers went to .20, spoke4's IKE SA to the hub died unanswered, and a new one from .21 replaced it;"
  elif [ "$UNANS" -ge 1 ] && [ "$DUPS" -ge 1 ]; then R15=XFAIL; W15="$W15 libreswan $PV: the hub's pluto answered spoke4's retransmitted requests $DUPS times at .20 (a retransmitted answer goes to the IKE SA's endpoint, which a retransmission does not move), spoke4's IKE SA to the hub died unanswered, and a new one from .21 replaced it;"
  elif [ "$UNANS" -ge 1 ] && [ "$HRE" -ge 1 ]; then R15=XFAIL; W15="$W15 libreswan $PV: the hub's pluto went on sending its own requests to .20 ($HRE retransmissions) while spoke4's requests from .21 went unanswered, spoke4's IKE SA to the hub died, and a new one from .21 replaced it;"
  else R15=FAIL; W15="$W15 slower than 30 s without a libreswan cause shown;"; fi
  echo "T nat-rebind-done $(up)"
  scenario nat-rebind $R15 "NAT address 198.51.100.20 -> .21: hub's cache at .21 after $DT15 s ('$C15'); nothing at .20 after $DG15 s (still at .20:${STALE:- none}); hub pluto: 'ignoring peer endpoint change' x$IGN, retransmitted answers at .20 x$DUPS, its own requests retransmitted to .20 x$HRE, IKE SAs at .21 $IKE21, frames to .21 $TO21; spoke4 pluto: requests to the hub unanswered x$UNANS;$W15"
  if [ $R15 != PASS ]; then   # the programs' own account, for a reader of the console
    set -- $M15
    tail -n +$(( $1 + 1 )) $LABOUT/spoke4/pluto.log | grep -E '"dmvpn-198-51-100-1"|\] 198\.51\.100\.1 ' |
      grep -E 'No response|established IKE SA|initiating|deleting|reviv|ESTABLISHED|INVALID|failed' | tail -20 | cut -c1-200 | sed 's/^/  nat-rebind spoke4 pluto: /'
    tail -n +$(( $2 + 1 )) $LABOUT/hub/pluto.log | grep -E '198\.51\.100\.2[01]' |
      grep -E 'established|deleting|ignoring|replac|No response|TS_UNACC|failed' | tail -15 | cut -c1-200 | sed 's/^/  nat-rebind hub pluto: /'
    tail -n +$(( $3 + 1 )) $LABOUT/spoke4/nhrpbridge.log | grep -E 'link-(up|down)|initiate|child-' | tail -12 | cut -c1-200 | sed 's/^/  nat-rebind spoke4 nhrpbridge: /'
    tail -n +$(( $4 + 1 )) $LABOUT/spoke4/nhrpd.log | grep -E 'NHS|Registration|VICI|vc|VC' | tail -15 | cut -c1-200 | sed 's/^/  nat-rebind spoke4 nhrpd: /'
  fi
  # the next scenario needs spoke4 at .21: a hub stuck at .20 lets go of it (the operator's
  # remedy), and spoke4, answered no more, comes back from .21 by its liveness check
  if [ -n "$STALE" ]; then
    echo "  nat-rebind clean-up: hub terminate dmvpn 198.51.100.20: $(nb hub terminate dmvpn 198.51.100.20 --json 2>&1 | cut -c1-120)"
    waitfor 90 hub_nbma_is 203.0.113.14 198.51.100.21 || echo "  nat-rebind clean-up: spoke4 not back at .21 in 90 s"
    echo "T nat-rebind-cleaned $(up)"
  fi
  fi

  if want nat-shared; then
  # ---- 17. nat-shared: spoke5 joins spoke4 behind the NAT's one address (.21) ----------
  # nhrpd keys its peers by NBMA address, so two spokes behind one address are one peer to
  # it (FRR issue 8308): expected to fail. What must hold: pluto's two IKE SAs stay two
  # links in nhrpbridge (one per certificate ID), and no binding from that address is
  # accepted on the other peer's certificate. PASS only if both spokes register and reach
  # the hub; XFAIL when they cannot and nhrpbridge rejected what it could not attribute.
  echo "T nat-shared-start $(up)"
  R16=PASS; W16=""
  RJ0=$(nblog hub | grep -c 'binding-rejected: .* from NBMA 198\.51\.100\.21 ')
  AC0=$(nblog hub | grep -c 'binding-accepted: .* from NBMA 198\.51\.100\.21 ')
  AMB0=$(nblog hub | grep -c 'binding-rejected: .* peers share NBMA 198\.51\.100\.21 ')
  NBL0=$(nblog hub | wc -l)
  start_pluto spoke5
  waitfor 20 wk spoke5 --globalstatus || W16="$W16 spoke5's pluto slow to start;"
  start_stack spoke5; wait $!
  NODES="$NODES spoke5"
  waitfor 60 sh -c "[ \$(ipsec whack --rundir /tmp/lab/hub/run --showstates | grep -cE '198\.51\.100\.21:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA') -ge 2 ]" \
    || { R16=FAIL; W16="$W16 the hub has not two IKE SAs at .21;"; }
  # what nhrpd does next: spoke5 registers (rejected or not); give it one registration round
  waitfor 60 sh -c "[ \$(grep -c 'binding-[a-z]*: GRE 203\.0\.113\.15 from NBMA 198\.51\.100\.21 ' $LABOUT/hub/nhrpbridge.log) -ge 1 ]" \
    || W16="$W16 no binding asked for spoke5 in 60 s;"
  P5=0; P4=0; for k in 1 2 3 4 5 6 7 8 9 10; do ping_ok spoke5 203.0.113.1 && P5=$((P5+1)); ping_ok spoke4 203.0.113.1 && P4=$((P4+1)); done
  echo "T nat-shared-done $(up)"
  PORTS=$(wk hub --showstates 2>&1 | grep -oE '198\.51\.100\.21:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA' | cut -d' ' -f1 | sort -u | tr '\n' ' ')
  # pluto's two Child SAs with one selector pair churn (the second's rekeys hit `File
  # exists`): the two links are looked for over 30 s, not at one instant
  links21() { LINKS=$(nb hub status --json 2>&1 | grep -o '"remote-host": "198\.51\.100\.21", "remote-id": "[^"]*", "up": true' | grep -o 'CN=[a-z0-9]*' | sort -u | tr '\n' ' ')
    case "$LINKS" in *CN=spoke4*CN=spoke5*) return 0;; esac; return 1; }
  waitfor 30 links21; links21
  KIDS=$(wk hub --trafficstatus 2>&1 | grep '198\.51\.100\.21' | grep -c 'type=ESP')
  RJ=$(( $(nblog hub | grep -c 'binding-rejected: .* from NBMA 198\.51\.100\.21 ') - RJ0 ))
  AMB=$(( $(nblog hub | grep -c 'binding-rejected: .* peers share NBMA 198\.51\.100\.21 ') - AMB0 ))
  AC=$(( $(nblog hub | grep -c 'binding-accepted: .* from NBMA 198\.51\.100\.21 ') - AC0 ))
  # a binding accepted for one spoke's GRE address in the other's name: the wrong authorization
  WRONG=$(nblog hub | grep 'binding-accepted: .* from NBMA 198\.51\.100\.21 ' | grep -cE 'GRE 203\.0\.113\.14 .*CN=spoke5|GRE 203\.0\.113\.15 .*CN=spoke[^5]')
  C5=$(hub_has 203.0.113.15 | head -1 | cut -c1-80); C4=$(hub_has 203.0.113.14 | head -1 | cut -c1-80)
  echo "  hub links at .21: $LINKS; IKE endpoints: $PORTS; hub Child SAs at .21: $KIDS"
  nblog hub | grep 'binding-[a-z]*: .* from NBMA 198\.51\.100\.21 ' | tail -4 | cut -c1-260 | sed 's/^/  hub: /'
  # pluto's two Child SAs churn (the rekeys of one hit `File exists`, TS_UNACCEPTABLE),
  # so both links are not always up at one instant (a debian13 run saw only spoke5's over
  # the 30 s): an ambiguous-peer judgement naming both IDs is nhrpbridge holding them as
  # two links then
  BOTH=$(nblog hub | tail -n +$((NBL0 + 1)) | grep 'peers share NBMA 198\.51\.100\.21 ' | sed 's/.*peers share NBMA//' | grep 'CN=spoke4' | grep -c 'CN=spoke5')
  case "$LINKS" in *CN=spoke4*CN=spoke5*) ;; *) [ "$BOTH" -ge 1 ] || { R16=FAIL; W16="$W16 nhrpbridge never held one link per spoke at .21 ('$LINKS', no judgement naming both);"; };; esac
  if [ "$WRONG" != 0 ]; then R16=FAIL; W16="$W16 $WRONG bindings accepted on the other spoke's certificate;"
  elif [ $R16 = FAIL ]; then :
  elif [ -n "$C5" ] && [ -n "$C4" ] && [ $P5 -ge 9 ] && [ $P4 -ge 9 ]; then R16=PASS
  elif [ "$AMB" -ge 1 ]; then R16=XFAIL; W16="$W16 nhrpd keys peers by NBMA address (FRR issue 8308): it asked for both spokes' bindings at one address, and nhrpbridge, unable to tell which peer sent them, rejected them;"
  else R16=FAIL; W16="$W16 not both registered and no ambiguity shown;"; fi
  scenario nat-shared $R16 "spoke5 behind the same NAT address as spoke4: hub IKE SAs at $PORTS; nhrpbridge links at .21: $LINKS(pluto's Child SAs there: $KIDS; judgements naming both IDs: $BOTH); bindings from .21 since: $AC accepted, $RJ rejected ($AMB as ambiguous), accepted on the other's certificate: $WRONG; hub cache .15: '$C5', .14: '$C4'; pings to the hub spoke5 $P5/10, spoke4 $P4/10;$W16"
  fi

  if want underlay-change; then
  # ---- 18. underlay-change: spoke1's address changes as DHCP would do it ------------------
  # spoke1 runs with `nbma: auto`. nhrpd sees the new tunnel source address and asks to
  # initiate from it (my-host); nhrpbridge makes pluto listen on it and re-adds the conns.
  # PASS: the hub's cache has spoke1 at the new NBMA, SAs between the hub and .31 carry
  # the pings, and nothing is left at .11 on the hub (pluto, kernel, nhrpbridge, nhrpd).
  echo "T underlay-change-start $(up)"
  R18=PASS; W18=""
  MV0=$(nblog spoke1 | grep -c 'local NBMA address .* -> 198\.51\.100\.31')
  read -r t18 _ < /proc/uptime
  # a new lease: the old address goes (with the default route through it), the new comes
  ip -n labspoke1 addr del 198.51.100.11/24 dev eth0
  ip -n labspoke1 addr add 198.51.100.31/24 dev eth0
  ip -n labspoke1 route add default via 198.51.100.1
  if waitfor 90 hub_nbma_is 203.0.113.11 198.51.100.31; then
    read -r t _ < /proc/uptime; DT18=$(awk -v a=$t18 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  else DT18="none in 90"; R18=FAIL; W18="$W18 spoke1 not in the hub's cache at .31 in 90 s;"; fi
  echo "T underlay-change-new-nbma $(up)"
  gone11() { ! ip -n labhub xfrm state | grep -qE '198\.51\.100\.11( |$)' &&
    ! wk hub --showstates 2>&1 | grep -q '198\.51\.100\.11:' &&
    ! nb hub status --json 2>&1 | grep -q '"198\.51\.100\.11"' &&
    ! vt hub 'show ip nhrp cache' | grep -q ' 198\.51\.100\.11 '; }
  waitfor 60 gone11
  read -r t _ < /proc/uptime; DG18=$(awk -v a=$t18 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  ST18=""
  ip -n labhub xfrm state | grep -qE '198\.51\.100\.11( |$)' && ST18="$ST18 kernel-states"
  wk hub --showstates 2>&1 | grep -q '198\.51\.100\.11:' && ST18="$ST18 pluto-states"
  nb hub status --json 2>&1 | grep -q '"198\.51\.100\.11"' && ST18="$ST18 nhrpbridge-records"
  vt hub 'show ip nhrp cache' | grep -q ' 198\.51\.100\.11 ' && ST18="$ST18 nhrpd-cache"
  [ -n "$ST18" ] && { R18=FAIL; W18="$W18 still at .11:$ST18;"; }
  P18=0; for k in 1 2 3 4 5 6 7 8 9 10; do ping_ok spoke1 203.0.113.1 && P18=$((P18+1)); done
  [ $P18 -ge 9 ] || { R18=FAIL; W18="$W18 pings to the hub $P18/10;"; }
  # the SAs that carry it: ESP between the hub and .31 in the hub's kernel
  X31=$(ip -n labhub xfrm state | grep -cE '^src 198\.51\.100\.(1 dst 198\.51\.100\.31|31 dst 198\.51\.100\.1)$')
  [ "$X31" -ge 2 ] || { R18=FAIL; W18="$W18 hub kernel SAs with .31: $X31;"; }
  IK31=$(wk hub --showstates 2>&1 | grep -cE '198\.51\.100\.31:[0-9]+ (STATE_V2_)?ESTABLISHED_IKE_SA')
  MV=$(( $(nblog spoke1 | grep -c 'local NBMA address .* -> 198\.51\.100\.31') - MV0 ))
  [ "$MV" -ge 1 ] || { R18=FAIL; W18="$W18 spoke1's nhrpbridge never saw the address move;"; }
  ML=$(nblog spoke1 | grep 'local NBMA address .* -> 198\.51\.100\.31' | tail -1 | sed 's/.*local NBMA/local NBMA/' | cut -c1-110)
  PP=$(grep -c 'left=198\.51\.100\.31' /tmp/lab/spoke1/nb/peers.conf)
  C18=$(hub_has 203.0.113.11 | head -1 | cut -c1-80)
  echo "T underlay-change-done $(up)"
  scenario underlay-change $R18 "spoke1 eth0 198.51.100.11 -> .31 (nbma: auto): hub's cache at .31 after $DT18 s ('$C18'); nothing at .11 after $DG18 s (still:${ST18:- none}); hub IKE SAs at .31 $IK31, kernel SAs with .31 $X31; pings to the hub $P18/10; spoke1 nhrpbridge: '$ML'; per-peer conns with left=.31: $PP;$W18"
  fi

  fi

  # ---- 20. scale (PSK runs): twelve more spokes start at once and register -------------
  # Reported: the time until the last is in the hub's cache, and the hub's nhrpbridge and
  # nhrpd (RSS, CPU time). PASS: all twelve registered within 180 s, every binding
  # accepted by the hub's policy (each spoke's own address), and the first spokes kept.
  if [ -n "$SCALE" ] && want scale; then
  echo "T scale-start $(up)"
  R19=PASS; W19=""
  cpu_of() { set -- $(cut -d')' -f2 /proc/$1/stat); echo $(( (${12} + ${13}) )); }   # ticks
  rss_of() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
  HNB=$(cat /tmp/lab/hub/nb.pid); HNH=$(cat /tmp/lab/hub/frr/nhrpd.pid)
  NBC0=$(cpu_of $HNB); NHC0=$(cpu_of $HNH)
  for n in $SCALE; do start_pluto $n; done
  for n in $SCALE; do waitfor 60 wk $n --globalstatus || W19="$W19 $n's pluto not up;"; done
  read -r t19 _ < /proc/uptime
  STARTING=""; for n in $SCALE; do start_stack $n; STARTING="$STARTING $!"; done
  wait $STARTING
  read -r t _ < /proc/uptime; ST19=$(awk -v a=$t19 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  NODES="$NODES $SCALE"
  scale_in() { [ "$(vt hub 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[01][0-9] ')" -ge 12 ]; }
  if waitfor 180 scale_in; then
    read -r t _ < /proc/uptime; DT19=$(awk -v a=$t19 -v b=$t 'BEGIN{printf "%.1f", b-a}')
  else DT19="not in 180"; R19=FAIL; fi
  IN19=$(vt hub 'show ip nhrp cache' | grep -cE '^gre1 +dynamic +203\.0\.113\.1[01][0-9] ')
  AC19=$(nblog hub | grep -cE 'binding-accepted: GRE 203\.0\.113\.1[01][0-9] ')
  RJ19=$(nblog hub | grep -cE 'binding-rejected: GRE 203\.0\.113\.1[01][0-9] ')
  [ "$RJ19" = 0 ] || { R19=FAIL; W19="$W19 $RJ19 bindings rejected;"; }
  hub_has 203.0.113.11 >/dev/null || { R19=FAIL; W19="$W19 spoke1 left the hub's cache;"; }
  P19=0; for n in spoke101 spoke106 spoke112; do ping_ok $n 203.0.113.1 && P19=$((P19+1)); done
  [ $P19 = 3 ] || { R19=FAIL; W19="$W19 pings to the hub from 3 of them: $P19/3;"; }
  NBC=$(( $(cpu_of $HNB) - NBC0 )); NHC=$(( $(cpu_of $HNH) - NHC0 ))
  MEM=$(awk '/^MemTotal/ {t=$2} /^MemAvailable/ {a=$2} END {printf "%d of %d MB", a/1024, t/1024}' /proc/meminfo)
  echo "T scale-done $(up)"
  scenario scale $R19 "12 spokes started at once (stacks up in $ST19 s): all 12 in the hub's cache after $DT19 s ($IN19 there; $AC19 bindings accepted, $RJ19 rejected); hub nhrpbridge RSS $(rss_of $HNB) kB, CPU $(awk -v c=$NBC 'BEGIN{printf "%.1f", c/100}') s during it (total $(awk -v c=$(cpu_of $HNB) 'BEGIN{printf "%.1f", c/100}') s); hub nhrpd RSS $(rss_of $HNH) kB, CPU $(awk -v c=$NHC 'BEGIN{printf "%.1f", c/100}') s; guest memory available $MEM; pings to the hub from 3 of them $P19/3;$W19"
  fi

  # ---- shut down --------------------------------------------------------------------
  # pluto starts per node (the lab kills spoke1's and spoke2's on purpose; any other
  # restart is a crash, kept in pluto.stdout)
  echo "PLUTO-STARTS: $(for n in $NODES; do printf '%s=%s ' $n $(grep -c 'Starting Pluto' $LABOUT/$n/pluto.log); done)\
crashes: $(for n in $NODES; do c=$(grep -acE 'Segmentation fault|EXPECTATION FAILED|ASSERTION FAILED' /tmp/lab/$n/pluto.stdout); [ "$c" = 0 ] || printf '%s=%s ' $n $c; done)"
  # where the guest's one CPU went: per process (long-lived ones), and busy/idle over the run
  ps -eo pid,time,etime,args --sort=-time | cut -c1-170 | head -30 > $LABOUT/ps-cpu.txt
  awk -v up="$(up)" '$1 == "cpu" {printf "GUEST-CPU over %.0f s: user %.0f s, system %.0f s, idle %.0f s\n", up, $2/100, $4/100, $5/100}' /proc/stat | tee -a $LABOUT/ps-cpu.txt
  # and whose short-lived children used it: the reaped children's CPU of each living
  # process (hooks roll up into pluto, whack into the daemons, polls into this script)
  for f in /proc/[0-9]*/stat; do
    read -r st 2>/dev/null < $f || continue
    set -- ${st##*) }
    c=$(( ${14} + ${15} )); [ $c -ge 100 ] || continue
    echo "$((c / 100)) s $(tr '\0' ' ' < ${f%stat}cmdline | cut -c1-150)"
  done | sort -rn > $LABOUT/children-cpu.txt
  echo "GUEST-CPU children of: $(head -6 $LABOUT/children-cpu.txt | cut -c1-80 | tr '\n' ';')"
  kill $TD 2>/dev/null; wait $TD 2>/dev/null
  for n in $NODES; do touch /tmp/lab/$n/norespawn /tmp/lab/$n/norespawn-pluto; done
  for n in $NODES; do
    d=/tmp/lab/$n/frr; kill $(cat $d/nhrpd.pid) $(cat $d/zebra.pid) $(cat $d/mgmtd.pid 2>/dev/null) $(cat /tmp/lab/$n/nb.pid) 2>/dev/null
  done
  DOWN=""
  for n in $NODES; do wk $n --shutdown >/dev/null 2>&1 & DOWN="$DOWN $!"; done
  wait $DOWN
  sleep 1
  cp /tmp/lab/wire.pcap "$LABOUT/" 2>/dev/null
  for n in $NODES; do cp /tmp/lab/$n/ipsec.conf /tmp/lab/$n/nb/peers.conf /tmp/lab/$n/pluto.stdout \
    /tmp/lab/$n/nb/updown.env "$LABOUT/$n/" 2>/dev/null; done
  echo "T shutdown-done $(up)"
  case "$RESULTS" in *=FAIL*) echo "LAB-RESULT: FAIL";; *) echo "LAB-RESULT: PASS";; esac
}
main 2>&1 | tee "$LABOUT/guest-console.log"
sync     # hostfs pages reach the host before the power goes (sysrq 'o' does not sync)
echo LAB-INIT-FINISHED
poweroff -f 2>/dev/null; echo o > /proc/sysrq-trigger
