#!/usr/bin/env bash
# Start a real single-node SLURM cluster (slurmctld + slurmd + munged) on this
# machine, for tests/test_slurm_profile.py and CI.  Debian/Ubuntu only.
#
#   tests/slurm/start_slurm.sh          # install if needed, configure, start, wait until idle
#   tests/slurm/start_slurm.sh --stop   # stop the three daemons (pid files)
#   tests/slurm/start_slurm.sh --status # one-line status, exit 1 if not up
#
# Idempotent: when everything is already up with the same slurm.conf it only
# prints the status line (well under a second).  No systemd needed: the
# daemons are started directly and daemonise themselves.  Needs root, or
# passwordless sudo (GitHub Actions runners).
#
# Environment knobs (all optional):
#   SLURM_PARTITION  name of the (default) partition        [main]
#   SLURM_WAIT_S     seconds to wait for the node to be idle [60]
set -euo pipefail

PARTITION="${SLURM_PARTITION:-main}"
WAIT_S="${SLURM_WAIT_S:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key
PKGS=(slurmctld slurmd slurm-client munge)

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
as_root() { "${SUDO[@]}" "$@"; }
log() { echo "[start_slurm] $*" >&2; }

NODE="$(hostname -s)"

# True if the pid in file $1 is alive (and, if $2 given, is that program).
pid_alive() {
    local f="$1" name="${2:-}" pid
    as_root test -s "$f" || return 1
    pid="$(as_root cat "$f" 2>/dev/null)" || return 1
    [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null || return 1
    if [ -n "$name" ]; then
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    fi
}

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM the daemon, wait up to 10 s
    local f="$1" name="$2" pid
    if pid_alive "$f" "$name"; then
        pid="$(as_root cat "$f")"
        log "stopping $name (pid $pid)"
        as_root kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do as_root kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    as_root rm -f "$f"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

status_line() {  # what the controller reports, not what we configured
    local st cpus mem part
    read -r st cpus mem part < <(sinfo -h -N -n "$NODE" -o '%T %c %m %P' 2>/dev/null | head -n1) || true
    echo "SLURM up: node=$NODE state=${st:-unknown} partition=${part:-?} cpus=${cpus:-?} realmemory=${mem:-?}MB (stop: $0 --stop)"
}

all_daemons_up() {
    pid_alive "$MUNGE_PID" munged && pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd
}

dump_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        echo "===== $f (last 60 lines) =====" >&2
        as_root tail -n 60 "$f" >&2 2>/dev/null || echo "(missing)" >&2
    done
    echo "===== sinfo =====" >&2
    sinfo -N -l >&2 2>&1 || true
    scontrol show node "$NODE" >&2 2>&1 || true
}

case "${1:-}" in
    --stop)
        stop_pidfile "$SLURMD_PID" slurmd
        stop_pidfile "$CTLD_PID" slurmctld
        stop_pidfile "$MUNGE_PID" munged
        echo "SLURM stopped"
        exit 0 ;;
    --status)
        if all_daemons_up; then
            case "$(node_state || true)" in
                idle|mixed|allocated|completing) status_line; exit 0 ;;
            esac
        fi
        echo "SLURM not up (run tests/slurm/start_slurm.sh)"; exit 1 ;;
    "") ;;
    *) echo "usage: $0 [--stop|--status]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------- 1. packages
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Keep the packages' maintainer scripts from trying to start services
    # (there is no init system here); only if no policy is already in place.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        policy_created=1
    fi
    trap '[ "$policy_created" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d' EXIT
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$policy_created" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    trap - EXIT
fi

# --------------------------------------------------------------- 2. slurm.conf
CPUS="$(nproc)"
MEM_TOTAL="$(free -m | awk '/^Mem:/{print $2}')"
# 95 % of the total, at most 1 GiB below it: slurmd drains a node whose real
# memory is below RealMemory, and the kernel reports slightly different totals.
REALMEM=$(( MEM_TOTAL * 95 / 100 ))
if [ $(( MEM_TOTAL - REALMEM )) -gt 1024 ]; then REALMEM=$(( MEM_TOTAL - 1024 )); fi
DEF_MEM_PER_CPU=$(( REALMEM / CPUS ))
SLURM_USER=root   # keeps state/spool ownership trivial on a throwaway test node

new_conf="$(cat <<EOF
# Generated by tests/slurm/start_slurm.sh: single-node test cluster, no
# accounting, no cgroups.  Regenerated (and daemons restarted) when it changes.
ClusterName=specfm-test
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=${SLURM_USER}
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# no cgroups: plain process tracking, no task binding/confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# finished jobs stay visible to squeue for 300 s: the snakemake slurm plugin
# needs MinJobAge >= 3 x its first status-check delay to trust squeue
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REALMEM} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=${DEF_MEM_PER_CPU} OverSubscribe=NO
EOF
)"

conf_changed=0
if ! as_root test -f "$CONF" || [ "$(as_root cat "$CONF")" != "$new_conf" ]; then
    conf_changed=1
fi

# Fast path: nothing to do.
if [ "$conf_changed" = 0 ] && all_daemons_up; then
    st="$(node_state || true)"
    case "$st" in
        idle|mixed|allocated|completing)
            status_line; exit 0 ;;
    esac
fi

if [ "$conf_changed" = 1 ]; then
    log "writing $CONF"
    as_root mkdir -p "$CONF_DIR"
    printf '%s\n' "$new_conf" | as_root tee "$CONF" >/dev/null
    as_root chmod 644 "$CONF"
    # a changed node definition needs a clean restart of both slurm daemons
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
fi

as_root mkdir -p /var/spool/slurmd /var/spool/slurmctld "$LOG_DIR"
as_root chown "$SLURM_USER": /var/spool/slurmctld "$LOG_DIR"
as_root chmod 755 /var/spool/slurmd /var/spool/slurmctld "$LOG_DIR"

# --------------------------------------------------------------------- 3. munge
if ! as_root test -s "$MUNGE_KEY"; then
    log "creating $MUNGE_KEY"
    as_root mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1 || as_root test -x /usr/sbin/mungekey; then
        as_root mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        as_root dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
as_root chown munge:munge /etc/munge "$MUNGE_KEY"
as_root chmod 700 /etc/munge
as_root chmod 400 "$MUNGE_KEY"
as_root mkdir -p /run/munge /var/lib/munge /var/log/munge
as_root chown munge:munge /run/munge /var/lib/munge /var/log/munge
as_root chmod 755 /run/munge
as_root chmod 700 /var/lib/munge /var/log/munge

if ! pid_alive "$MUNGE_PID" munged; then
    log "starting munged"
    as_root rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    as_root runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munge does not work"; dump_logs; exit 1
fi

# ------------------------------------------------------------ 4. slurm daemons
if ! pid_alive "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    as_root rm -f "$CTLD_PID"
    as_root /usr/sbin/slurmctld
fi
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
if ! pid_alive "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    as_root rm -f "$SLURMD_PID"
    as_root /usr/sbin/slurmd
fi

# -------------------------------------------------------- 5. wait for idle node
deadline=$(( SECONDS + WAIT_S ))
resumed=0
while :; do
    st="$(node_state || true)"
    if ! pid_alive "$SLURMD_PID" slurmd; then
        st="${st:-none} (slurmd not running)"
    fi
    case "$st" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*|fail*)
            # e.g. left drained/down by an earlier unclean stop: resume it once
            if [ "$resumed" = 0 ]; then
                log "node is '$st', resuming it"
                as_root scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "node $NODE not idle after ${WAIT_S}s (state: '${st:-none}')"
        dump_logs
        exit 1
    fi
    sleep 1
done

status_line
