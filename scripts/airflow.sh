#!/usr/bin/env bash
# `make airflow`: the Airflow UI and scheduler for these DAGs on http://127.0.0.1:8080.
#
# Runs `airflow standalone` (api-server, scheduler, dag-processor, triggerer; LocalExecutor,
# SQLite) with the same AIRFLOW_HOME (./.airflow) and data folder (./data) as `make run`, so its
# runs show in the UI, with the faceattr pages (the plugin in faceattr/ui, found through its entry
# point). Ctrl-C, or SIGINT/SIGTERM to the pid in .airflow/airflow.pid, stops every component.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

export AIRFLOW_HOME="$REPO/.airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"  # task processes; GPU work is capped by the pool
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False  # a trigger from the UI runs at once
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export FACEATTR_HOME="${FACEATTR_HOME:-$REPO/data}"
export FACEATTR_DATA_ROOTS="${FACEATTR_DATA_ROOTS:-$FACEATTR_HOME}"
export FACEATTR_DB_URL="${FACEATTR_DB_URL:-sqlite:///$FACEATTR_HOME/faceattr.db}"
LOG="$AIRFLOW_HOME/setup.log"

command -v airflow >/dev/null || { echo "make airflow: airflow is not on PATH; run 'make airflow'" >&2; exit 1; }
mkdir -p "$AIRFLOW_HOME" "$FACEATTR_HOME"
quiet() {  # a set-up command, its chatter kept in $LOG unless it fails
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "make airflow: '$*' failed; full log: $LOG" >&2
        exit 1
    fi
}
quiet airflow db migrate
airflow pools get gpu >/dev/null 2>&1 || quiet airflow pools set gpu 1 "faceattr GPU work: train, validate, test, score"

PIDFILE="$AIRFLOW_HOME/airflow.pid"
cat <<EOF
Airflow UI:      http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT   (user: admin)
Admin password:  $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (written on first start)
faceattr pages:  http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT/plugin/faceattr (and a run's "Training report" tab)
DAGs:            $AIRFLOW__CORE__DAGS_FOLDER (faceattr_train, faceattr_score, faceattr_data); pool 'gpu', 1 slot
Data:            FACEATTR_HOME=$FACEATTR_HOME  FACEATTR_DATA_ROOTS=$FACEATTR_DATA_ROOTS
Run store:       $FACEATTR_DB_URL
Stop:            Ctrl-C, or kill -INT \$(cat $PIDFILE) (also when started in the background)
EOF

# supervise.py stops standalone and every process it started on SIGINT, SIGTERM or SIGHUP, even
# when this script was started with SIGINT ignored (a background job of another script).
exec python "$REPO/scripts/supervise.py" --pidfile "$PIDFILE" -- airflow standalone
