"""A real CeleryExecutor cluster on loopback for tests/integration/test_celery.py.

Airflow's api-server, scheduler and dag-processor plus Celery workers, each its own process group
(airflow_env.AirflowClient), against this machine's PostgreSQL (tests/support.py: fresh databases
per cluster) and Redis (127.0.0.1:6379: keys under the cluster's own prefix, deleted at the end).
The Airflow configuration is a copy of airflow.cfg.example with the docker-compose host names
replaced by loopback ones, so the example file itself is what runs here.
"""
from __future__ import annotations

import configparser
import json
import os
import secrets
import socket
import subprocess
import uuid
from pathlib import Path

from airflow_env import AIRFLOW, REPO, AirflowClient, free_port

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = int(os.environ.get("FACEATTR_TEST_REDIS_DB", "7"))


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_redis() -> None:
    """Skip (fail under CI) when Redis is unreachable on loopback."""
    from support import missing

    if not reachable(REDIS_HOST, REDIS_PORT):
        missing(f"Redis on {REDIS_HOST}:{REDIS_PORT} unreachable: the Celery tests need it")


def redis_keys(db: int, prefix: str) -> list[str]:
    import redis

    return [key.decode() for key in redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).scan_iter(match=prefix + "*")]


def redis_clean(db: int, prefix: str) -> None:
    """Delete this cluster's keys (its prefix) only; other users of this Redis db keep theirs."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


def worker_hostname() -> str:
    """[core] hostname_callable for the test workers: each reports its own name, as separate machines would."""
    return os.environ.get("FACEATTR_TEST_WORKER_NAME") or socket.getfqdn()


def loopback_url(url: str, database_url: str) -> str:
    """The example's database URL (its scheme and driver kept) pointed at our test database."""
    from sqlalchemy.engine import make_url

    prefix = "db+" if url.startswith("db+") else ""  # Celery's result_backend spelling
    driver = make_url(url.removeprefix(prefix)).drivername
    return prefix + make_url(database_url).set(drivername=driver).render_as_string(hide_password=False)


def write_config(path: Path, *, home: Path, database: str, port: int, redis_prefix: str) -> Path:
    """airflow.cfg.example with loopback hosts, this test's database (a URL), Redis key prefix and folders."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "airflow.cfg.example")
    expected = {("core", "executor"): "CeleryExecutor", ("operators", "default_queue"): "default"}
    for (section, key), value in expected.items():
        if parser.get(section, key) != value:
            raise RuntimeError(f"airflow.cfg.example: [{section}] {key} is not {value!r}; update tests/integration/celery_env.py")
    from cryptography.fernet import Fernet

    fernet = Fernet.generate_key().decode()
    secret = secrets.token_urlsafe(32)
    changes = {
        ("core", "dags_folder"): str(REPO / "dags"),
        ("core", "execution_api_server_url"): f"http://127.0.0.1:{port}/execution/",
        ("core", "fernet_key"): fernet,
        ("core", "hostname_callable"): "celery_env.worker_hostname",
        ("database", "sql_alchemy_conn"): loopback_url(parser.get("database", "sql_alchemy_conn"), database),
        ("celery", "broker_url"): f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        # Every broker key starts with the cluster's own prefix (kombu's global_keyprefix), so two
        # test runs on one Redis never see each other's queues, and clean-up deletes only ours.
        ("celery_broker_transport_options", "global_keyprefix"): redis_prefix,
        ("celery", "result_backend"): loopback_url(parser.get("celery", "result_backend"), database),
        ("celery", "worker_concurrency"): "2",  # a 2-core machine
        ("api", "host"): "127.0.0.1",
        ("api", "port"): str(port),
        ("api", "secret_key"): secret,
        ("api", "base_url"): f"http://127.0.0.1:{port}",
        ("api_auth", "jwt_secret"): secret,
        ("logging", "base_log_folder"): str(home / "logs"),
        # A SIGKILLed worker's task stops heartbeating; fail it (and so retry it) after 20 s, not 5 min.
        ("scheduler", "task_instance_heartbeat_timeout"): "20",
        ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): "2",
        ("dag_processor", "refresh_interval"): "5",
        # The reference and the interrupted run of tests/integration/test_celery.py go side by side.
        ("core", "max_active_runs_per_dag"): "2",
        ("core", "dagbag_import_timeout"): "120",
    }
    for (section, key), value in changes.items():
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)
    with open(path, "w") as handle:
        parser.write(handle)
    return path


class Cluster(AirflowClient):
    """The running services, a REST client for the api-server and helpers to stop and restart workers.

    `databases` are the URLs of two empty PostgreSQL databases: Airflow's, and the run store's
    (its own alembic_version, apart from Airflow's).
    """

    CORE = {
        "api-server": ["api-server", "--workers", "1"],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
    }

    def __init__(self, home: Path, extra_env: dict[str, str], databases: tuple[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        airflow_db, store_db = databases
        self.redis_prefix = f"faceattr-test-{uuid.uuid4().hex[:12]}:"
        config = write_config(home / "airflow.cfg", home=home, database=airflow_db, port=self.port,
                              redis_prefix=self.redis_prefix)
        (home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        super().__init__(home, {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FACEATTR"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(config),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), str(REPO / "tests" / "integration"), os.environ.get("PYTHONPATH")])),
            "FACEATTR_GPU_QUEUE": "gpu",
            "FACEATTR_DB_URL": store_db,
            **extra_env,
        })

    # -- life cycle ---------------------------------------------------------------------------
    def create(self) -> None:
        self.airflow("db", "migrate", timeout=600)
        self.airflow("pools", "set", "gpu", "1", "faceattr GPU work")

    def airflow(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(AIRFLOW), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return done.stdout

    def start(self) -> None:
        for name, args in self.CORE.items():
            self.spawn(name, args)
        self.start_worker("worker-default", "default", concurrency=2)
        self.start_worker("worker-gpu", "gpu", concurrency=1)

    def start_worker(self, name: str, queue: str, *, concurrency: int) -> subprocess.Popen:
        """A Celery worker on one queue, with its own celery hostname, PID file and reported hostname."""
        return self.spawn(name, [
            "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
            "--celery-hostname", f"{name}@faceattr-test", "--pid", str(self.home / f"{name}.pid"),
            "--skip-serve-logs", "--without-gossip", "--without-mingle",
        ], env={"FACEATTR_TEST_WORKER_NAME": name})

    def destroy(self) -> None:
        """Delete our Redis keys; called after stop() (the databases go with their fixture)."""
        redis_clean(REDIS_DB, self.redis_prefix)

    # -- REST API -----------------------------------------------------------------------------
    def login(self) -> None:
        self.wait_for("the api-server", lambda: self.request("GET", "/api/v2/monitor/health")[0] == 200,
                      timeout=180)
        status, body = self.request("POST", "/auth/token", {"username": "admin", "password": self.password})
        if status != 201:
            raise AssertionError(f"login failed: {status} {body}")
        self.token = body["access_token"]

    def trigger(self, dag_id: str, conf: dict) -> str:
        status, body = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        if status != 200:
            raise AssertionError(f"trigger {dag_id}: {status} {body}")
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")[1].get("state")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        _, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def wait_finished(self, dag_id: str, run_id: str, timeout: float) -> str:
        def finished():
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self.wait_for(f"{dag_id} run {run_id}", finished, timeout=timeout, every=2)
