#!/usr/bin/env bash
# Open MPI remote launcher for the namespace "hosts" of launch/netns_hosts.sh:
# used instead of ssh with  mpirun --mca plm_rsh_agent /abs/path/launch/netns_agent.sh
#
# Open MPI calls it exactly like ssh:  <agent> [options] <host> <command words...>
# where the command words, joined by spaces, are a shell command line such as
#   PATH=/usr/bin:$PATH ; export PATH ; LD_LIBRARY_PATH=... ; /usr/bin/orted -mca ess "env" ...
# (the orted's arguments quote the HNP URI, so the words must be joined and
# given to a shell, as sshd does). Since the shell runs on the same machine,
# PATH / LD_LIBRARY_PATH are the caller's ones plus what Open MPI prepends.
#
# The command runs in network namespace <host> (ip netns exec), in a new UTS
# namespace whose hostname is <host>: the orted and the ranks it starts see
# their own host name and only that namespace's interfaces (eth0 10.77.0.x and
# lo). mpirun maps ranks to the hostfile's node names and starts one orted
# per name, so ranks on different namespace hosts are on different nodes
# (local rank 0 on each, MPI_Comm_split_type(SHARED) splits them, no
# shared-memory btl between them), and with the UTS name the per-host session
# directories (/tmp/ompi.<hostname>.<uid>) differ too.
#
# Tested with Open MPI 4.1.4, with and without --mca plm_rsh_no_tree_spawn 1
# (with it the orteds are started with --daemonize and this script returns at
# once, as ssh does; without it, it lives as long as the orted).
#
# DT_AGENT_LOG=/path  appends each invocation to that file (debugging).
set -euo pipefail

# ssh-style options before the host name (e.g. from plm_rsh_args): ignore them.
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in
    -[lopiFEbcDeIJLmQRSWw]) shift 2 ;;  # ssh options that take a value
    *) shift ;;
  esac
done
[[ $# -ge 2 ]] || { echo "netns_agent.sh: usage: $0 <host> <command...>" >&2; exit 255; }

host=${1#*@}   # drop user@
shift
ns=${host%%.*} # short name = namespace name
if ! ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
  echo "netns_agent.sh: no network namespace '$ns' for host '$host' (run launch/netns_hosts.sh up)" >&2
  exit 255
fi
[[ -n ${DT_AGENT_LOG:-} ]] && printf '%s %s: %s\n' "$(date +%T)" "$host" "$*" >>"$DT_AGENT_LOG"

# ip netns exec and unshare (without --fork) exec, so the process Open MPI
# waits on is the shell that runs the orted: its exit is the orted's exit.
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && exec /bin/sh -c "$2"' sh "$ns" "$*"
