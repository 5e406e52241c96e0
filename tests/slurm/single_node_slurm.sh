#!/usr/bin/env bash
# starlabels' test cluster: a real one-node Slurm on loopback, with accounting (slurmdbd +
# MariaDB), so tests/test_workflow.py can run the workflow through profiles/slurm and check with
# sacct that jobs really ran under Slurm. Adapted from the team's shared recipe; Debian 12,
# Slurm 22.05, as root. Used by .ci/run (`up`) on throw-away CI machines only.
#
#   single-node-slurm.sh up     install (apt) and start munge, mariadb, slurmdbd, slurmctld, slurmd
#   single-node-slurm.sh down   stop what `up` started (by the pid files it wrote)
#
# Notes
# - Without slurmdbd, `sacct` answers "accounting storage is disabled" on Slurm 22.05 and the
#   executor never sees jobs finish; squeue forgets finished jobs. Keep the database.
# - The executor polls job status every 40 s or more: a workflow of a few jobs takes ~1.5 min.
# - Account "demo", partition "main". Node CPUs/memory are read from this machine.
# - It changes /etc (munge key, slurm.conf): run it only on a throw-away test machine or in CI.
set -euo pipefail
cmd=${1:-up}
state=/tmp/starlabels-slurm
mkdir -p "$state"
# each step is named on stderr with the time, so a caller that gives up can say where it stood
step() { echo "$(date +%T) $*" >&2; }

down() {
  for p in slurmd slurmctld slurmdbd; do
    [ -f /var/run/$p.pid ] && kill "$(cat /var/run/$p.pid)" 2>/dev/null || true
  done
  mysqladmin -uroot shutdown 2>/dev/null || true
  [ -f /var/run/munge/munged.pid ] && kill "$(cat /var/run/munge/munged.pid)" 2>/dev/null || true
}

if [ "$cmd" = down ]; then down; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mysqld >/dev/null; then
  step "installing slurm-wlm slurmdbd munge mariadb-server"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
step "packages present"

# munge
mkdir -p /etc/munge /var/run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
chown -R munge:munge /etc/munge /var/run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force

step "munged running"
# MariaDB for accounting
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin -uroot ping >/dev/null 2>&1; then
  # the server runs as mysql: its pid and error log go where that user may write
  setsid mysqld_safe --user=mysql --log-error=/run/mysqld/error.log >"$state/mysqld.log" 2>&1 &
  for _ in $(seq 120); do mysqladmin -uroot ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysql -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-test-only';
  ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurm-test-only';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(free -m | awk '/Mem:/{print $2}') - 2000 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/var/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-test-only
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# keep sbatch --comment in accounting: Snakemake's executor writes the rule name there, which is
# how a test (or a user) sees which Slurm job ran which rule
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MinJobAge=600
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/var/run/slurmctld.pid
SlurmdPidFile=/var/run/slurmd.pid
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

step "database ready"
pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster local >/dev/null 2>&1 || true
sacctmgr -i add account demo >/dev/null 2>&1 || true
sacctmgr -i add user root account=demo >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
step "slurmctld and slurmd started"
# A controller restarted from saved state still lists jobs whose processes died with the old
# machine; they hold the node's CPUs for ever, so a test cluster starts with an empty queue.
for _ in $(seq 30); do squeue -h >/dev/null 2>&1 && break; sleep 1; done
scancel --full $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
# a node drained by an earlier configuration (memory, CPUs) takes no jobs until resumed
scontrol update nodename="$host" state=resume 2>/dev/null || true
for _ in $(seq 60); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
if ! sinfo -h -o %t 2>/dev/null | grep -q idle; then
  echo "the node did not become idle:" >&2
  sinfo -R >&2 || true
  scontrol show node "$host" >&2 || true
  tail -n 20 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log >&2 || true
  exit 1
fi
# bounded: a job that cannot be placed would otherwise make srun wait for ever
if ! timeout 120 srun -t 1 hostname >/dev/null; then
  echo "a one-task job did not run within 120 s" >&2
  squeue >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
  exit 1
fi
echo "slurm up: partition main, account demo, node $host ($cpus CPUs, ${mem} MB)"
