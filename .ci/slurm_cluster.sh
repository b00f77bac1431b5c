#!/usr/bin/env bash
# A real one-host SLURM cluster for the tests (tests/test_slurm.py): Debian's slurm-wlm (22.05 on bookworm) with
# munge authentication and accounting (slurmdbd on MariaDB), started by hand (no systemd), with two fake compute
# nodes n1 and n2 (2 CPUs each) on 127.0.0.1. Run as root:
#
#   .ci/slurm_cluster.sh            install (apt) if needed, configure, start, wait until both nodes are idle
#   .ci/slurm_cluster.sh --stop     stop the daemons this script starts
#
# Idempotent: when slurmctld already runs and sinfo lists n1 and n2, it only waits for them to be idle.
# Exit status 77 means "cannot run here" (not root, no apt-get, install failed): the tests skip with the message.
#
# Why each setting (measured on these machines, Debian 12, slurm-wlm 22.05):
#   - no cgroups in the sandbox: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none;
#   - SlurmUser=root: no slurm-owned spool/state trees to prepare;
#   - two slurmd on one host: NodeHostname=localhost NodeAddr=127.0.0.1 and one Port each, %n in the slurmd
#     spool/pid/log paths, `slurmd -N n1`; n1 and n2 must resolve (MASTER_ADDR is the first host of the job's
#     nodelist), so they are added to /etc/hosts;
#   - AuthInfo=cred_expire=10: a requeued job waits cred_expire seconds before it may start again (default 120);
#   - SchedulerParameters sched_interval/bf_interval: a requeued job is picked up within seconds, not a minute;
#   - accounting (slurmdbd) so that sacct knows finished jobs: without it submitit's job.result() waits forever
#     for a job that died without writing its result. slurm.conf must name accounting_storage/slurmdbd before
#     slurmctld first starts.
set -uo pipefail

SKIP=77
NODES=(n1 n2)
PORTS=(6831 6832)
CPUS=2
CLUSTER=a2v
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_PASS=a2v-slurmdbd

say() { echo "[slurm_cluster] $*" >&2; }
skip() { say "SKIP: $*"; exit "$SKIP"; }
die() { say "ERROR: $*"; for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmdbd.log "$LOG_DIR"/slurmd-n1.log; do
          [ -f "$f" ] && { say "--- tail $f"; tail -n 15 "$f" >&2; }; done; exit 1; }
running() { pgrep -x "$1" >/dev/null 2>&1; }

PIDFILES=(/run/slurmctld.pid /run/slurmd-n1.pid /run/slurmd-n2.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid
          /run/munge/munged.pid)
if [ "${1:-}" = "--stop" ]; then
    # only the daemons this script started, by the pid files it gave them
    for f in "${PIDFILES[@]}"; do
        [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
    done
    exit 0
fi

[ "$(id -u)" = 0 ] || skip "needs root (installs and starts slurmctld, slurmd, slurmdbd, munged, mariadbd)"

# ---------------------------------------------------------------- reuse a running cluster
wait_idle() {
    local deadline=$((SECONDS + ${1:-60}))
    while [ $SECONDS -lt $deadline ]; do
        local idle
        idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ " $idle " == *" n1 "* && " $idle " == *" n2 "* ]]; then
            say "nodes idle: $idle"
            return 0
        fi
        # a node left DOWN/DRAIN by an earlier run (killed slurmd, unexpected reboot) comes back here
        for n in "${NODES[@]}"; do
            state=$(sinfo -h -N -n "$n" -o '%t' 2>/dev/null | head -n1)
            case "$state" in down*|drain*|drng*|fail*) scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1;; esac
        done
        sleep 1
    done
    return 1
}

if running slurmctld && sinfo -h -N -o '%N' 2>/dev/null | grep -qx n2; then
    for i in "${!NODES[@]}"; do
        running_node=$(pgrep -af "slurmd -N ${NODES[$i]}\$" || true)
        [ -n "$running_node" ] || /usr/sbin/slurmd -N "${NODES[$i]}" || die "slurmd -N ${NODES[$i]} failed"
    done
    # jobs of an earlier run may still hold the nodes
    wait_idle 120 && exit 0
    die "slurmctld runs but n1/n2 did not become idle"
fi

# ---------------------------------------------------------------- install
need_install=0
for b in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need_install=1
done
if [ $need_install = 1 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "no apt-get (not Debian/Ubuntu): install slurm-wlm by hand"
    say "installing slurm-wlm, munge, mariadb (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed (no network?)"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server \
        >/tmp/slurm_cluster_apt.log 2>&1 \
        || { tail -n 20 /tmp/slurm_cluster_apt.log >&2; skip "apt-get install failed"; }
fi

# ---------------------------------------------------------------- munge
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! running munged; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work"

# ---------------------------------------------------------------- /etc/hosts: the fake node names resolve
grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts || echo "127.0.0.1 n1 n2" >>/etc/hosts

# ---------------------------------------------------------------- MariaDB + slurmdbd (accounting)
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! running mariadbd && ! running mysqld; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 2>&1
    (setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 >/var/log/mariadbd-a2v.log 2>&1 &)
fi
for _ in $(seq 100); do mariadb -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
mariadb -uroot -e 'select 1' >/dev/null 2>&1 || die "mariadbd did not start (see /var/log/mariadbd-a2v.log)"
mariadb -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                   GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || die "could not create the slurm database user"

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/lib/slurm/slurmctld
cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# written by .ci/slurm_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$CONF_DIR/slurmdbd.conf"

# ---------------------------------------------------------------- slurm.conf
# Job ids continue where the accounting database stopped when slurmctld's own state is gone (a fresh container
# beside an old database): a reused id would give sacct, and so submitit, two jobs under one number.
last_job=$(mariadb -N -uroot -e "SELECT COALESCE(MAX(id_job), 0) FROM slurm_acct_db.${CLUSTER}_job_table" \
           2>/dev/null || echo 0)
first_job=$(( ${last_job:-0} + 1 ))
mem=$(/usr/sbin/slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
mem=$(( ${mem:-2048} * 9 / 10 ))
{
    cat <<EOF
# written by .ci/slurm_cluster.sh: one host, two fake nodes (see the comments in that script)
ClusterName=$CLUSTER
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
FirstJobId=$first_job
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$i]} NodeHostname=localhost NodeAddr=127.0.0.1 Port=${PORTS[$i]}" \
             "CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
} >"$CONF_DIR/slurm.conf"
# 22.05 has no CgroupPlugin=disabled: no cgroup.conf at all (proctrack/linuxproc and task/none need none)
grep -q 'slurm_cluster.sh' "$CONF_DIR/cgroup.conf" 2>/dev/null && rm -f "$CONF_DIR/cgroup.conf"

# ---------------------------------------------------------------- start
if ! running slurmdbd; then
    /usr/sbin/slurmdbd || die "slurmdbd did not start"
fi
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || die "sacctmgr add cluster failed"

for n in "${NODES[@]}"; do mkdir -p "/var/lib/slurm/slurmd/$n"; done
if ! running slurmctld; then
    /usr/sbin/slurmctld || die "slurmctld did not start"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
for n in "${NODES[@]}"; do
    pgrep -af "slurmd -N $n\$" >/dev/null || /usr/sbin/slurmd -N "$n" || die "slurmd -N $n did not start"
done
wait_idle 90 || die "nodes did not become idle: $(sinfo -N 2>&1 | tr '\n' ';')"
