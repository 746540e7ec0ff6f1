#!/usr/bin/env bash
# Two "hosts" on one machine: Linux network namespaces joined by a bridge.
#
#   launch/netns_hosts.sh up      create dt-host-a (10.77.0.1) and dt-host-b (10.77.0.2)
#   launch/netns_hosts.sh down    remove namespaces, bridge, veths, host-name entries
#   launch/netns_hosts.sh cut     silently cut host B off (no TCP reset)
#   launch/netns_hosts.sh heal    undo `cut`
#   launch/netns_hosts.sh status  show what exists
#
# Layout (mpirun runs in the root namespace or in one of the hosts):
#
#   root ns: bridge dt-br0 10.77.0.254/24
#              |-- veth dt-veth-a <--> eth0 10.77.0.1/24 in netns dt-host-a
#              `-- veth dt-veth-b <--> eth0 10.77.0.2/24 in netns dt-host-b
#
# Names: the two host names are added to /etc/hosts (between marker lines,
# removed by `down`) for mpirun in the root namespace, and to
# /etc/netns/<ns>/hosts, which `ip netns exec` bind-mounts over /etc/hosts
# inside the namespace. Needs root, iproute2 (apt-get install -y iproute2).
#
# `cut` sets the root-side veth of host B down: every packet between host B
# and the rest is dropped from then on and the peer never answers (no TCP RST,
# no ICMP from it), as with a pulled cable or a dead switch: connections stay
# ESTABLISHED and retransmit into the void; only new connections fail, once
# ARP for the lost address has failed (EHOSTUNREACH). `up` and `down` are
# idempotent; DT_NETNS_PREFIX / DT_NETNS_SUBNET allow a second, separate pair.
set -euo pipefail

PREFIX=${DT_NETNS_PREFIX:-dt}       # names: <prefix>-host-a, <prefix>-host-b, <prefix>-br0
SUBNET=${DT_NETNS_SUBNET:-10.77.0}  # a free /24 (first three octets)
BR=${PREFIX}-br0
NAMES=(${PREFIX}-host-a ${PREFIX}-host-b)
ADDRS=(${SUBNET}.1 ${SUBNET}.2)
VETHS=(${PREFIX}-veth-a ${PREFIX}-veth-b)
ROOT_ADDR=${SUBNET}.254
MARK_BEGIN="# BEGIN ${PREFIX} netns hosts (launch/netns_hosts.sh)"
MARK_END="# END ${PREFIX} netns hosts"

die() { echo "netns_hosts.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root"
command -v ip >/dev/null || die "'ip' not found (apt-get install -y iproute2)"

have_ns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
have_link() { ip link show "$1" >/dev/null 2>&1; }

hosts_lines() {
  local i
  for i in 0 1; do echo "${ADDRS[$i]} ${NAMES[$i]}"; done
}

# Rewrite /etc/hosts in place (cat >, not sed -i: /etc/hosts is often a bind
# mount in containers and cannot be replaced by rename).
strip_hosts() {
  local tmp
  tmp=$(mktemp)
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' /etc/hosts >"$tmp"
  cat "$tmp" >/etc/hosts
  rm -f "$tmp"
}

up() {
  have_link "$BR" || ip link add "$BR" type bridge
  ip addr replace "$ROOT_ADDR/24" dev "$BR"
  ip link set "$BR" up
  local i ns veth
  for i in 0 1; do
    ns=${NAMES[$i]} veth=${VETHS[$i]}
    have_ns "$ns" || ip netns add "$ns"
    if ! have_link "$veth"; then
      # create the pair with a temporary peer name, then move + rename the peer.
      ip link add "$veth" type veth peer name "${veth}-p"
      ip link set "${veth}-p" netns "$ns"
      ip -n "$ns" link set "${veth}-p" name eth0
    fi
    ip link set "$veth" master "$BR"
    ip link set "$veth" up
    ip -n "$ns" addr replace "${ADDRS[$i]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "::1 localhost ip6-localhost ip6-loopback"
      echo "${ADDRS[$i]} $ns"
      echo "$ROOT_ADDR ${PREFIX}-root"
      hosts_lines | grep -v " $ns\$"
    } >"/etc/netns/$ns/hosts"
  done
  # With br_netfilter loaded, bridged packets also pass iptables FORWARD;
  # a DROP policy there would cut the hosts off from each other (not changed
  # here: it is a machine-wide setting).
  if [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0) == 1 ]] &&
    command -v iptables >/dev/null && iptables -S FORWARD 2>/dev/null | grep -q '^-P FORWARD DROP'; then
    echo "netns_hosts.sh: warning: iptables FORWARD policy DROP applies to $BR (bridge-nf-call-iptables=1)" >&2
  fi
  strip_hosts
  { echo "$MARK_BEGIN"; hosts_lines; echo "$MARK_END"; } >>/etc/hosts
  # quick sanity check (if ping is installed): each namespace reaches the other.
  command -v ping >/dev/null && for i in 0 1; do
    ip netns exec "${NAMES[$i]}" ping -c1 -W2 "${ADDRS[$((1 - i))]}" >/dev/null 2>&1 ||
      echo "netns_hosts.sh: warning: ${NAMES[$i]} cannot ping ${ADDRS[$((1 - i))]}" >&2
  done
  echo "netns_hosts.sh: up: ${NAMES[0]}=${ADDRS[0]} ${NAMES[1]}=${ADDRS[1]} root=${ROOT_ADDR} bridge=${BR}"
}

down() {
  local i
  for i in 0 1; do
    # Deleting the namespace destroys its veth end, and with it the pair, a
    # little later (or once the last process in it is gone): delete the root
    # end too, and do not mind if it vanished in between.
    if have_ns "${NAMES[$i]}"; then ip netns del "${NAMES[$i]}" || true; fi
    if have_link "${VETHS[$i]}"; then ip link del "${VETHS[$i]}" 2>/dev/null || true; fi
    rm -rf "/etc/netns/${NAMES[$i]}"
  done
  if have_link "$BR"; then ip link del "$BR" 2>/dev/null || true; fi
  rmdir /etc/netns 2>/dev/null || true
  strip_hosts
  local left=""
  for i in 0 1; do
    if have_ns "${NAMES[$i]}" || have_link "${VETHS[$i]}"; then left+=" ${NAMES[$i]}"; fi
  done
  if have_link "$BR"; then left+=" $BR"; fi
  [[ -z $left ]] || die "down: still present:$left"
  echo "netns_hosts.sh: down"
}

cut() {
  have_link "${VETHS[1]}" || die "${VETHS[1]} does not exist (run 'up' first)"
  ip link set "${VETHS[1]}" down
  echo "netns_hosts.sh: cut: ${VETHS[1]} down, ${NAMES[1]} (${ADDRS[1]}) unreachable (packets dropped silently)"
}

heal() {
  have_link "${VETHS[1]}" || die "${VETHS[1]} does not exist (run 'up' first)"
  ip link set "${VETHS[1]}" up
  # While the link was down, sockets left over from the cut (e.g. orphaned
  # FIN-WAIT connections still retransmitting) kept ARP for the other side
  # failing; a packet queued on such an entry in the second before it fails
  # again gets EHOSTUNREACH even though the link is back (seen: a new orted's
  # connect() to mpirun failing, the job then waiting forever). Start afresh.
  local i
  ip neigh flush dev "$BR" 2>/dev/null || true
  for i in 0 1; do ip -n "${NAMES[$i]}" neigh flush dev eth0 2>/dev/null || true; done
  echo "netns_hosts.sh: heal: ${VETHS[1]} up, neighbour caches flushed"
}

status() {
  ip netns list | grep "^${PREFIX}-" || echo "no ${PREFIX}-* namespaces"
  ip -br link show type bridge 2>/dev/null | grep "^${BR}" || true
  ip -br link show 2>/dev/null | grep "^${PREFIX}-veth" || true
  grep -A3 -F "$MARK_BEGIN" /etc/hosts || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  cut) cut ;;
  heal) heal ;;
  status) status ;;
  *) echo "usage: $0 up|down|cut|heal|status" >&2; exit 2 ;;
esac
