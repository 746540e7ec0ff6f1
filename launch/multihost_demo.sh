#!/usr/bin/env bash
# Two-host MPI training on one machine (network namespaces as hosts), then a
# network link cut mid-run that must end the job with an error, not a hang.
#
#   launch/multihost_demo.sh [work-dir]        (as root: needs ip netns)
#
# 1. launch/netns_hosts.sh up: netns dt-host-a (10.77.0.1) and dt-host-b
#    (10.77.0.2), bridged to the root namespace (10.77.0.254).
# 2. Placement: the mpirun line below runs `hostname`: rank 0 alone on
#    dt-host-a, rank 1 alone on dt-host-b, each local rank 0.
# 3. Run 1: a short 2-rank training (one rank per host); must exit 0 with a
#    final checkpoint and "world: 2 rank(s)" in the log.
# 4. Run 2 (mpirun in the root namespace, OOB keepalive MCA settings): a long
#    training, link to host B cut (no TCP reset) after a few logged steps.
#    Open MPI detects the dead daemon and ends the job.
# 5. Run 3 (mpirun on host A, as on a real cluster's first node; default
#    keepalive; net.ipv4.tcp_retries2=5 inside the two namespaces only): same
#    cut; now difftrain's collective timeout (distributed.timeout_seconds=20)
#    fires first, rank 0 prints its error and calls MPI_Abort.
#    Runs 2 and 3 must end with a non-zero mpirun status within
#    DT_DEMO_EXIT_LIMIT seconds of the cut; the summary prints seconds from cut
#    to exit, exit code and the error lines.
# The namespaces (and any process left in them) are removed on exit (trap).
#
# Environment: DIFFTRAIN (binary, default build/cli/difftrain),
#   DT_DEMO_STEPS (steps of run 1, default 20), DT_DEMO_EXIT_LIMIT (default 90),
#   DT_NETNS_PREFIX / DT_NETNS_SUBNET (see netns_hosts.sh; default dt, 10.77.0).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DIFFTRAIN:-$ROOT/build/cli/difftrain}
HOSTS=$ROOT/launch/netns_hosts.sh
AGENT=$ROOT/launch/netns_agent.sh
CONFIG=$ROOT/tests/tiny.yaml
STEPS=${DT_DEMO_STEPS:-20}
EXIT_LIMIT=${DT_DEMO_EXIT_LIMIT:-90}
COLLECTIVE_TIMEOUT=20
export DT_NETNS_PREFIX=${DT_NETNS_PREFIX:-dt} DT_NETNS_SUBNET=${DT_NETNS_SUBNET:-10.77.0}
HOST_A=$DT_NETNS_PREFIX-host-a HOST_B=$DT_NETNS_PREFIX-host-b
SUBNET=$DT_NETNS_SUBNET.0/24 ADDR_A=$DT_NETNS_SUBNET.1/24 ADDR_B=$DT_NETNS_SUBNET.2/24

[[ $(id -u) == 0 ]] || { echo "multihost_demo.sh: run as root (ip netns)" >&2; exit 2; }
[[ -x $BIN ]] || { echo "multihost_demo.sh: no binary $BIN" >&2; exit 2; }
command -v bc >/dev/null || { echo "multihost_demo.sh: needs bc" >&2; exit 2; }
WORK=${1:-$(mktemp -d /tmp/difftrain-multihost.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

mpirun_pid=
cleanup() {
  local status=$? ns pids
  trap - EXIT INT TERM
  [[ -n $mpirun_pid ]] && kill -9 "$mpirun_pid" 2>/dev/null || true
  # orteds and ranks this demo started inside the namespaces (e.g. the orted
  # of a cut-off host B) would keep a deleted namespace alive: end them.
  for ns in $HOST_A $HOST_B; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
  done
  "$HOSTS" down >/dev/null || true
  # Open MPI session directories of the two demo hosts (killed orteds leave them)
  rm -rf "${TMPDIR:-/tmp}/ompi.$HOST_A".* "${TMPDIR:-/tmp}/ompi.$HOST_B".*
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "multihost_demo.sh: FAIL: $*" >&2; exit 1; }
count_lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

"$HOSTS" up
HOSTFILE=$WORK/hostfile
printf '%s slots=1\n%s slots=1\n' "$HOST_A" "$HOST_B" >"$HOSTFILE"

# One rank per host, launched through netns_agent.sh instead of ssh.
#  plm_rsh_no_tree_spawn: mpirun starts every orted itself (no orted-to-orted
#    launches), and the orteds daemonize, so the launcher exits as ssh would.
#  btl tcp,self + *_if_include: ranks and daemons talk only over the subnet
#    that `cut` cuts (never shared memory, never another interface).
MPIRUN=(mpirun --allow-run-as-root --hostfile "$HOSTFILE" -np 2 --map-by node --bind-to none
  --mca plm_rsh_agent "$AGENT" --mca plm_rsh_no_tree_spawn 1
  --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET"
  -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
# Why a cut link can hang mpirun, and the keepalive fix (run 2):
# mpirun talks to each orted over one TCP connection (the out-of-band channel,
# OOB); Open MPI 4.1 has no heartbeat, so without a TCP reset mpirun learns a
# host is gone only when that socket fails. Keepalive (default 300 s idle, then
# 9 probes 20 s apart) only runs while the connection is idle: once mpirun has
# queued a message to the dead orted -- it does as soon as a rank calls
# MPI_Abort ("kill your ranks") -- the kernel retransmits instead, for
# net.ipv4.tcp_retries2 (default 15: about 15 min), and mpirun waits all that
# time. With 5 s idle + 3 probes 2 s apart the dead orted is detected <= 11 s
# after the cut, while the link is still idle, i.e. before the ranks'
# distributed.timeout_seconds: mpirun reports "lost communication with a
# remote daemon", kills the ranks it can reach and exits non-zero. The settings
# reach the orteds too, so host B's orted also sees its link to mpirun die and
# kills its rank. Probes are answered by the peer's kernel, so a busy orted or
# a long training step never trips them; only a dead link or host does.
# Other candidates do not help here: Open MPI 4.1.4 has no orte_abort_timeout
# (ompi_info lists none) and no daemon heartbeat; --timeout is a limit on the
# whole job's wall-clock time; orte_enable_recovery restarts failed processes.
KEEPALIVE=(--mca oob_tcp_keepalive_time 5 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3)
LONG_RUN=(train.max_steps=100000 checkpoint.every=1000000 distributed.timeout_seconds=$COLLECTIVE_TIMEOUT)

echo "== placement: the same mpirun line running hostname"
placement=$(timeout 60 "${MPIRUN[@]}" sh -c \
  'echo "rank $OMPI_COMM_WORLD_RANK host $(hostname) local_rank $OMPI_COMM_WORLD_LOCAL_RANK addr $(ip -4 -o addr show eth0 | awk "{print \$4}")"' |
  sort) || fail "placement mpirun failed"
echo "$placement"
grep -q "^rank 0 host $HOST_A local_rank 0 addr $ADDR_A\$" <<<"$placement" || fail "rank 0 not alone on $HOST_A"
grep -q "^rank 1 host $HOST_B local_rank 0 addr $ADDR_B\$" <<<"$placement" || fail "rank 1 not alone on $HOST_B"

echo "== run 1: $STEPS steps on 2 hosts"
RUN1=$WORK/run1
rm -rf "$RUN1"
set +e
timeout 600 "${MPIRUN[@]}" "${KEEPALIVE[@]}" "$BIN" train --config "$CONFIG" run.dir="$RUN1" data.dir="$WORK/data" \
  train.max_steps="$STEPS" >"$WORK/run1.log" 2>&1
rc=$?
set -e
grep -E 'world:|training done' "$WORK/run1.log" || true
[[ $rc == 0 ]] || { tail -30 "$WORK/run1.log"; fail "run 1: mpirun exit code $rc"; }
grep -q 'world: 2 rank(s)' "$WORK/run1.log" || fail "run 1: no 'world: 2 rank(s)' in the log"
final=$RUN1/checkpoints/$(printf 'step-%09d' "$STEPS")
[[ -f $final/state.json ]] || fail "run 1: no final checkpoint $final"
echo "run 1: exit 0, final checkpoint $final"

# Waits for logged steps of the background mpirun $mpirun_pid writing to run
# dir $1, shows where the ranks run, cuts the link to host B, waits for mpirun
# (at most EXIT_LIMIT s) and prints the summary of run $2 (stderr in $3).
summaries=()
cut_and_measure() {
  local run_dir=$1 name=$2 err=$3 ns n pid peers t_cut t_exit rc seconds left exited=0
  for _ in $(seq 120); do
    (($(count_lines "$run_dir/metrics.jsonl") >= 3)) && break
    kill -0 "$mpirun_pid" 2>/dev/null || break
    sleep 1
  done
  (($(count_lines "$run_dir/metrics.jsonl") >= 3)) || { cat "$err"; fail "$name logged no steps"; }
  echo "$name: $(count_lines "$run_dir/metrics.jsonl") metric lines logged; processes per namespace:"
  for ns in $HOST_A $HOST_B; do
    n=0
    for pid in $(ip netns pids "$ns"); do
      [[ $(cat "/proc/$pid/comm" 2>/dev/null) == difftrain ]] && n=$((n + 1))
    done
    peers=$(ip netns exec "$ns" ss -tnH state established 2>/dev/null | awk '$3 !~ /^127\./ {print $3 "->" $4}' | sort -u | tr '\n' ' ')
    echo "  $ns: $n difftrain rank(s); TCP: $peers"
    ((n == 1)) || fail "$name: expected one difftrain rank in $ns, found $n"
  done
  t_cut=$(date +%s.%N)
  "$HOSTS" cut
  while (($(echo "$(date +%s.%N) - $t_cut < $EXIT_LIMIT" | bc))); do
    kill -0 "$mpirun_pid" 2>/dev/null || { exited=1; break; }
    sleep 0.2
  done
  t_exit=$(date +%s.%N)
  rc=hung
  if ((exited)); then
    set +e
    wait "$mpirun_pid"
    rc=$?
    set -e
    mpirun_pid=
  fi
  seconds=$(printf '%.1f' "$(echo "$t_exit - $t_cut" | bc)")
  left=
  for pid in $(ip netns pids "$HOST_B"); do left+=" $(cat "/proc/$pid/comm" 2>/dev/null)[$pid]"; done
  summaries+=("$name: cut -> mpirun exit ${seconds} s, exit code $rc; left on $HOST_B at that moment:${left:- nothing}; error lines ($err):
$(grep -E 'difftrain: error|lost communication|Remote daemon|MPI_ABORT was invoked|Connection timed out|ORTE_ERROR_LOG' "$err" | sed 's/^/    /' || echo '    (none)')")
  if [[ $rc == hung ]]; then
    # leave evidence: who still holds which connection, with what queued
    { ss -tnop; for ns in $HOST_A $HOST_B; do echo "== $ns"; ip netns exec "$ns" ss -tnop; for pid in $(ip netns pids "$ns"); do ps -o pid=,stat=,args= -p "$pid"; done; done; } \
      >"$WORK/hang-state.txt" 2>&1 || true
    fail "$name: mpirun still running ${EXIT_LIMIT} s after the cut (see $err, $WORK/hang-state.txt)"
  fi
  [[ $rc != 0 ]] || fail "$name: mpirun exited 0 after the cut"
}

echo "== run 2: mpirun in the root namespace, OOB keepalive 5 s + 3 x 2 s; link to $HOST_B cut mid-run"
RUN2=$WORK/run2
rm -rf "$RUN2"
"${MPIRUN[@]}" "${KEEPALIVE[@]}" "$BIN" train --config "$CONFIG" run.dir="$RUN2" data.dir="$WORK/data" \
  "${LONG_RUN[@]}" >"$WORK/run2.out" 2>"$WORK/run2.err" &
mpirun_pid=$!
cut_and_measure "$RUN2" "run 2" "$WORK/run2.err"

echo "== run 3: mpirun on $HOST_A, default keepalive, tcp_retries2=5 on both hosts; link to $HOST_B cut mid-run"
"$HOSTS" heal
# run 2's keepalive made host B's orted exit by itself; anything left would be a bug
left=$(ip netns pids "$HOST_B")
[[ -z $left ]] || echo "warning: processes left on $HOST_B after run 2: $left"
# Per network namespace: only the two demo "hosts" change, not this machine.
# 5 retries = ~12.6 s of retransmissions before a socket with unacknowledged
# data fails (default 15 = ~15 min).
for ns in $HOST_A $HOST_B; do ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2=5; done
RUN3=$WORK/run3
rm -rf "$RUN3"
# mpirun on host A with host A's name: rank 0 is its own child, rank 1 goes
# through the agent to host B.
ip netns exec "$HOST_A" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$HOST_A" \
  "${MPIRUN[@]}" "$BIN" train --config "$CONFIG" run.dir="$RUN3" data.dir="$WORK/data" \
  "${LONG_RUN[@]}" >"$WORK/run3.out" 2>"$WORK/run3.err" &
mpirun_pid=$!
cut_and_measure "$RUN3" "run 3" "$WORK/run3.err"

echo "== summary"
for s in "${summaries[@]}"; do echo "$s"; done
echo "multihost_demo.sh: OK (work dir $WORK)"
