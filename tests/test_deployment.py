"""Flower's Deployment Engine (one SuperLink, one SuperNode per farmer, shaped links where namespaces can be made):
the same global model as the in-process loop, bytes that match the ledger within the protocol's overhead, and
nothing left behind (processes, namespaces, job folders), also after a failure or a SIGTERM."""

from __future__ import annotations

import copy
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from fedpeft.federated.deployment.links import ShapedLinks, leftovers, shaping_unavailable, tbf_burst_bytes
from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg
from fedpeft.models.head import adapted_head, base_head
from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer

pytest.importorskip("flwr")
FLOWER_PROCESSES = ("flower-superlink", "flower-supernode", "flwr-clientapp", "flwr-serverapp", "flower-superexec",
                    "fedpeft.federated.deployment.resident_worker")
DIM = 256


def _case(rank: int = 64):
    """Two farmers, a LoRA head of 2 x (64 x 256 + 3 x 64) parameters: 66.5 kB messages, large beside Flower's polling."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    features = torch.randn(3, DIM, generator=g)[labels][:, None, :] + torch.randn(24, 2, DIM, generator=g)
    torch.manual_seed(0)
    head = adapted_head(base_head(nn.Linear(DIM, 3), 0.0), "lora", rank, 8, 0.0, seed=0)
    clients = [Client(f"f{i}", FeatureViews(features[i::2], labels[i::2])) for i in range(2)]
    trainer = HeadTrainer(local_steps=3, rounds=2, batch_size=4, lr=0.01)
    return head, clients, trainer, FeatureSet(features[:, 0], labels)


@contextmanager
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _beside_in_process(**deployment_options):
    """The two-farmer case run for two rounds in-process (one torch thread, as the ServerApp and ClientApp processes
    run) and on the deployment engine: (clients, config, in-process result, deployment result, job folders before)."""
    from fedpeft.federated.deployment.engine import run_deployment

    head, clients, trainer, test = _case()
    config = RoundConfig(num_rounds=2, exchange="trainable", evaluate_clients=False)
    network = NetworkModel([1.0, 5.0])
    with _one_torch_thread():
        in_process = run_federated(copy.deepcopy(head), clients, FedAvg(), trainer, config, server_test=test,
                                   progress=False, network=network)
    folders = _job_folders()
    run = run_deployment(head, clients, FedAvg(), trainer, config, server_test=test, network=network, **deployment_options)
    return clients, config, in_process, run, folders


def _flower_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(name in cmd for name in FLOWER_PROCESSES):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _descendant_cmdlines(pid: int) -> list[str]:
    """The command lines of a process's living descendants (zombies, such as a finished `flwr supernode register` not
    yet reaped, and processes that end meanwhile are skipped)."""
    found = []
    for p in _descendants(pid):
        with suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            found.append(" ".join(p.cmdline()))
    return found


def _job_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "fedpeft-deployment-*")))


def _assert_nothing_left(folders_before: set[str]) -> None:
    _, alive = psutil.wait_procs(_flower_processes(), timeout=10)
    assert not [p.pid for p in alive if p.is_running()], "Flower processes left running"
    if shaping_unavailable() is None:
        assert leftovers() == [], "namespaces or interfaces left behind"
    assert _job_folders() <= folders_before, "a job folder was left behind"


def test_tbf_bucket_holds_at_least_two_frames_and_10_ms():
    assert tbf_burst_bytes(1.0) == 3028  # 10 ms at 1 Mbit/s is 1,250 B: two frames win
    assert tbf_burst_bytes(100.0) == 125_000  # 10 ms at 100 Mbit/s


def test_links_refuse_bad_rates():
    with pytest.raises(ValueError, match=r"rates_mbps = \[1.0, 0.0\] is not allowed"):
        ShapedLinks([1.0, 0.0])


@pytest.mark.skipif(shaping_unavailable() is not None, reason=f"no shaped links here: {shaping_unavailable()}")
def test_links_are_made_shaped_and_removed():
    with ShapedLinks([1.0, 5.0]) as net:
        made = leftovers()
        assert {link.namespace for link in net.links} <= set(made) and net.bridge in made
        shown = subprocess.run(["tc", "qdisc", "show", "dev", net.links[0].host_if], capture_output=True, text=True).stdout
        assert "tbf" in shown and "rate 1Mbit" in shown
        inside = subprocess.run(net.command_in(1, ["tc", "qdisc", "show", "dev", net.links[1].farmer_if]),
                                capture_output=True, text=True).stdout
        assert "rate 5Mbit" in inside
        with socket.create_server((net.server_address, 0)) as server:  # the farmer reaches the server through its veth
            port = server.getsockname()[1]
            reach = f"import socket; socket.create_connection(({net.server_address!r}, {port}), timeout=5).sendall(b'hi')"
            assert subprocess.run(net.command_in(0, [sys.executable, "-c", reach])).returncode == 0
            conn, (address, _) = server.accept()
            assert address == net.links[0].address and conn.recv(2) == b"hi"
            conn.close()
    assert leftovers() == []


def test_deployment_refuses_what_it_cannot_run():
    from fedpeft.federated.deployment.engine import run_deployment

    head, clients, trainer, _ = _case()
    with pytest.raises(ValueError, match="transport = 'fp16' is not supported on the deployment engine"):
        run_deployment(head, clients, FedAvg(), trainer, RoundConfig(num_rounds=1, transport="fp16"))
    with pytest.raises(ValueError, match="timeout_s = 0 is not allowed"):
        run_deployment(head, clients, FedAvg(), trainer, RoundConfig(num_rounds=1), timeout_s=0)
    with pytest.raises(ValueError, match="time_limit_s is not supported"):
        run_deployment(head, clients, FedAvg(), trainer, RoundConfig(num_rounds=1, time_limit_s=5))


@pytest.mark.slow
def test_deployment_matches_in_process_and_counts_bytes():
    from fedpeft.federated.deployment.engine import SUPEREXEC_POLL_S
    from fedpeft.federated.deployment.timing import PARTS, client_timing, round_parts

    clients, config, in_process, run, folders = _beside_in_process()

    for k, v in in_process.final_state.items():
        assert torch.equal(run.result.final_state[k], v), k
    assert run.result.history["server_loss"].tolist() == pytest.approx(in_process.history["server_loss"].tolist(), rel=1e-6)
    # the ledger counts the same messages, byte for byte
    key = ["round", "client", "direction"]
    assert run.result.ledger.frame().sort_values(key)["bytes"].tolist() == \
        in_process.ledger.frame().sort_values(key)["bytes"].tolist()
    # Flower's arrays carry the same tensors with their own (numpy) headers: a few dozen bytes per tensor
    m = run.messages
    assert len(m) == 8 and m["flower_bytes"].notna().all()
    assert ((m["flower_bytes"] - m["ledger_bytes"]).abs() <= 64 * 2).all()
    if run.shaped:
        assert run.rates_mbps == [1.0, 5.0]
        links = run.link_bytes.set_index(["round", "farmer"])
        ledger = m.pivot_table(index=["round", "client"], columns="direction", values="ledger_bytes")
        for (round_, farmer), row in links.iterrows():
            sent = ledger.loc[(round_, clients[farmer].cid)]
            # every payload byte crossed the link, plus headers and polling: more, but not several times more
            assert sent["down"] <= row["down"] <= 3 * sent["down"]
            assert sent["up"] <= row["up"] <= 3 * sent["up"]
    else:
        assert run.unshaped_reason and run.link_bytes.empty
    # locked down: the SuperLink listens on its one address only, each SuperNode's runtime API on its loopback
    listening = run.listening
    superlink, supernodes = listening["process"] == "superlink", listening["process"].str.startswith("supernode-")
    host = "127.0.0.1" if not run.shaped else listening.loc[superlink, "address"].iloc[0]
    assert set(listening.loc[supernodes, "process"]) == {f"supernode-{i}" for i in range(len(clients))}
    assert set(listening.loc[superlink, "address"]) == {host}
    assert set(listening.loc[supernodes, "address"]) == {"127.0.0.1"}
    assert run.tls
    assert not set(listening["address"]) & {"0.0.0.0", "::", ""}, listening
    # every round taken apart along its slowest farmer: stamps from the ClientApps and the ServerApp, parts that add up
    assert run.superexec_poll_s == SUPEREXEC_POLL_S
    timing = client_timing(run.result.client_history)
    assert len(timing) == int(run.result.client_history["reported"].sum())
    parts = round_parts(run.result.history[run.result.history["round"] >= 1], timing)
    assert parts["round"].tolist() == list(range(1, config.num_rounds + 1))
    assert (parts[["startup_s", "load_s", "train_s", "return_s"]] > 0).all().all(), parts
    assert (parts["pickup_s"] > -0.05).all(), parts  # a process's start time is read to the kernel's 10 ms tick
    assert parts[list(PARTS)].sum(axis=1).tolist() == pytest.approx(parts["round_s"].tolist())
    cpu = run.cpu_seconds.groupby("program")["cpu_s"].sum()
    assert cpu["flower-superlink"] > 0 and cpu["flower-supernode"] > 0
    assert cpu["flower-superexec (exited children)"] > 1.0  # the ClientApps: each imports torch, at least a CPU-second
    _assert_nothing_left(folders)


@pytest.mark.slow
def test_resident_clientapps_train_the_same_model_as_the_in_process_loop():
    """With one long-lived client per farmer (clientapps="resident"), the per-message ClientApps import Flower only and
    hand each message on: the global model is still the in-process loop's, bit for bit, every round is still stamped,
    and the resident clients' CPU is counted under their own program."""
    from fedpeft.federated.deployment.timing import PARTS, client_timing, round_parts

    clients, _, in_process, run, folders = _beside_in_process(clientapps="resident")
    assert run.clientapps == "resident"
    for k, v in in_process.final_state.items():
        assert torch.equal(run.result.final_state[k], v), k
    timing = client_timing(run.result.client_history)
    parts = round_parts(run.result.history[run.result.history["round"] >= 1], timing)
    assert parts["round"].tolist() == [1, 2]
    assert parts[list(PARTS)].sum(axis=1).tolist() == pytest.approx(parts["round_s"].tolist())
    cpu = run.cpu_seconds.groupby("program")["cpu_s"].sum()
    assert cpu["fedpeft.federated.deployment.resident_worker"] > 1.0  # imports torch once per farmer
    assert set(run.listening["process"]) <= {"superlink", *(f"supernode-{i}" for i in range(len(clients)))}  # Unix sockets only
    _assert_nothing_left(folders)


def test_resident_client_admits_only_the_runs_key_and_trains_like_a_fresh_clientapp(tmp_path):
    """The resident client answers a train message with what the per-message ClientApp's code computes on a freshly
    loaded model, message after message (its model, strategy and trainer are restored before each: the messages send
    the LoRA A factors only, so B trains from the job's zeros every time, and a worker that kept round 1's B would
    answer round 2 differently); a connection without the run's key is refused before anything is read, and the
    worker serves on after it."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client as connect

    from flwr.app import ArrayRecord, ConfigRecord

    from fedpeft.federated.deployment import job
    from fedpeft.federated.deployment.resident_app import socket_path
    from fedpeft.federated.flower_bridge import client_train_content
    from fedpeft.federated.loop import exchanged_keys

    head, clients, trainer, _ = _case(rank=4)
    config = RoundConfig(num_rounds=2, exchange="trainable", evaluate_clients=False)
    key = os.urandom(32)
    job.write_job(tmp_path, head, clients, FedAvg(), trainer, config, None, None, [], 1, key=key)
    env = os.environ | {job.KEY_ENV: key.hex()}
    worker = subprocess.Popen([sys.executable, "-m", "fedpeft.federated.deployment.resident_worker", str(tmp_path), "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        address = str(socket_path(tmp_path, 1))
        deadline = time.monotonic() + 120
        while not os.path.exists(address):
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                pytest.fail(f"the resident client never listened:\n{worker.communicate()[0].decode()[-2000:]}")
            time.sleep(0.2)
        with pytest.raises(AuthenticationError):
            connect(address, family="AF_UNIX", authkey=os.urandom(32))
        spec = job.read(job.client_file(tmp_path, 1), key=key)
        sent = {k: v.detach().clone() for k, v in head.state_dict().items() if k in exchanged_keys(head, "trainable") and "lora_A" in k}
        assert sent and len(sent) < len(exchanged_keys(head, "trainable"))
        for round_ in (1, 2):
            request = {"config": ConfigRecord({"server-round": round_, **FedAvg().client_config()}),
                       "arrays": ArrayRecord(sent), "timestamps": {"process_start_t": 1.0, "app_enter_t": 2.0}}
            # first what a fresh ClientApp computes from the client state the worker is about to read
            state_file = tmp_path / f"expected-state-{round_}.pt"
            if job.client_state_file(tmp_path, 1).is_file():
                state_file.write_bytes(job.client_state_file(tmp_path, 1).read_bytes())
            with _one_torch_thread():
                expected = client_train_content(request, 1, spec.client, job.load_model(spec.model), copy.deepcopy(spec.strategy),
                                                copy.deepcopy(spec.trainer), spec.config, sent, state_file)
            with connect(address, family="AF_UNIX", authkey=key) as conn:
                conn.send(request)
                status, reply = conn.recv()
            assert status == "ok", reply
            got, want = reply["arrays"].to_torch_state_dict(), expected["arrays"].to_torch_state_dict()
            assert got.keys() == want.keys() == sent.keys()
            for k in want:
                assert torch.equal(got[k], want[k]), (round_, k)
            sent = got  # the next round starts from this farmer's update, as if the server had only this farmer
            assert reply["metrics"]["process_start_t"] == 1.0 and reply["metrics"]["train_end_t"] >= reply["metrics"]["train_start_t"]
    finally:
        worker.kill()
        worker.wait()


class _FailingTrainer(HeadTrainer):
    def train(self, *args, **kwargs):
        raise RuntimeError("this farmer's trainer fails on purpose")


@pytest.mark.slow
def test_a_failing_client_stops_the_run_and_everything_is_cleaned_up():
    from fedpeft.federated.deployment.engine import run_deployment

    head, clients, _, test = _case(rank=4)
    trainer = _FailingTrainer(local_steps=1, rounds=1, batch_size=4, lr=0.01)
    folders = _job_folders()
    with pytest.raises(RuntimeError, match="without a result"):
        run_deployment(head, clients, FedAvg(), trainer, RoundConfig(num_rounds=1, exchange="trainable"), server_test=test,
                       timeout_s=300)
    _assert_nothing_left(folders | _job_folders())  # a failed run keeps its logs, but no process or namespace


@pytest.mark.slow
def test_sigterm_stops_every_process_and_removes_the_namespaces(tmp_path):
    script = tmp_path / "long_run.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from fedpeft.federated.deployment.engine import run_deployment
        from fedpeft.federated.loop import Client, RoundConfig
        from fedpeft.federated.network import NetworkModel
        from fedpeft.federated.strategies import FedAvg
        from fedpeft.models.head import adapted_head, base_head
        from fedpeft.training.head import FeatureViews, HeadTrainer
        labels = torch.arange(8) % 2
        clients = [Client(f"f{i}", FeatureViews(torch.randn(4, 1, 8), labels[i::2])) for i in range(2)]
        head = adapted_head(base_head(nn.Linear(8, 2), 0.0), "lora", 2, 4, 0.0, seed=0)
        print("starting", flush=True)
        run_deployment(head, clients, FedAvg(), HeadTrainer(1, 100, 2, 0.01), RoundConfig(num_rounds=100, exchange="trainable"),
                       network=NetworkModel([1.0]))
        """))
    folders = _job_folders()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not any("flower-supernode" in cmd for cmd in _descendant_cmdlines(proc.pid)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0 and "Interrupted" in out, out[-2000:]
    _assert_nothing_left(folders | _job_folders())


def test_job_files_are_unpickled_only_with_the_runs_signature(tmp_path, monkeypatch):
    """A job file written by someone else (a crafted pickle) or changed after signing is refused before unpickling."""
    import pickle

    from fedpeft.federated.deployment import job

    key = os.urandom(32)
    job.write_signed({"x": torch.ones(2)}, tmp_path / "client-0.pt", key)
    assert torch.equal(job.read(tmp_path / "client-0.pt", key)["x"], torch.ones(2))
    with pytest.raises(PermissionError, match="is not a job file signed with this run's key"):
        job.read(tmp_path / "client-0.pt", os.urandom(32))
    data = bytearray((tmp_path / "client-0.pt").read_bytes())
    data[-1] ^= 1
    (tmp_path / "client-0.pt").write_bytes(bytes(data))
    with pytest.raises(PermissionError, match="written by someone else or changed"):
        job.read(tmp_path / "client-0.pt", key)

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    (tmp_path / "client-1.pt").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(PermissionError):
        job.read(tmp_path / "client-1.pt", key)
    assert not (tmp_path / "ran").exists()
    monkeypatch.delenv(job.KEY_ENV, raising=False)
    with pytest.raises(PermissionError, match="FEDPEFT_JOB_KEY is not set"):
        job.read(tmp_path / "client-0.pt")


@pytest.mark.slow
def test_what_a_sigkilled_run_leaves_is_removed_by_the_next(tmp_path):
    """SIGKILL gives the run no chance to clean up: its SuperLink and SuperNodes keep running, with its job folder (and
    its namespaces where they can be made). clean_orphans, which every run calls first, removes all of it."""
    from fedpeft.federated.deployment.cleanup import clean_orphans

    script = tmp_path / "long_run.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from fedpeft.federated.deployment.engine import run_deployment
        from fedpeft.federated.loop import Client, RoundConfig
        from fedpeft.federated.network import NetworkModel
        from fedpeft.federated.strategies import FedAvg
        from fedpeft.models.head import adapted_head, base_head
        from fedpeft.training.head import FeatureViews, HeadTrainer
        labels = torch.arange(8) % 2
        clients = [Client(f"f{i}", FeatureViews(torch.randn(4, 1, 8), labels[i::2])) for i in range(2)]
        head = adapted_head(base_head(nn.Linear(8, 2), 0.0), "lora", 2, 4, 0.0, seed=0)
        run_deployment(head, clients, FedAvg(), HeadTrainer(1, 100, 2, 0.01), RoundConfig(num_rounds=100, exchange="trainable"),
                       network=NetworkModel([1.0]))
        """))
    folders = _job_folders()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len([cmd for cmd in _descendant_cmdlines(proc.pid) if "flower-supernode" in cmd]) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started its SuperNodes"
        time.sleep(0.5)
    orphans = _descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert any(p.is_running() for p in orphans) and _job_folders() - folders, "SIGKILL left nothing: nothing to test"
    removed = clean_orphans()
    assert any(line.startswith("process ") for line in removed) and any(line.startswith("folder ") for line in removed)
    _assert_nothing_left(folders)


def test_credentials_chain_names_and_key_formats(tmp_path):
    """The run's CA signs the SuperLink's certificate, which names exactly the given addresses and serves TLS servers
    only; SuperNode keys are EC P-384 in the OpenSSH formats Flower reads; every file is private to the user."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from fedpeft.federated.deployment.credentials import write_credentials

    c = write_credentials(tmp_path / "cred", ["10.77.0.1", "superlink.local"], 2)
    ca = x509.load_pem_x509_certificate(c.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(c.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    other = write_credentials(tmp_path / "other", ["10.77.0.1"], 0)
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises InvalidSignature or ValueError by version
        server.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_certificate.read_bytes()))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.77.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["superlink.local"]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(c.supernode_private_keys) == len(c.supernode_public_keys) == 2
    for private, public in zip(c.supernode_private_keys, c.supernode_public_keys, strict=True):
        key = load_ssh_private_key(private.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert load_ssh_public_key(public.read_bytes().strip()) == key.public_key()
    assert c.supernode_public_keys[0].read_bytes() != c.supernode_public_keys[1].read_bytes()
    for f in (tmp_path / "cred").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert (tmp_path / "cred").stat().st_mode & 0o777 == 0o700
    with pytest.raises(ValueError, match="addresses"):
        write_credentials(tmp_path / "x", [], 1)
    with pytest.raises(ValueError, match="valid_hours"):
        write_credentials(tmp_path / "y", ["127.0.0.1"], 1, valid_hours=0)


@pytest.mark.slow
def test_superlink_refuses_unregistered_supernodes_and_clients_of_another_ca(tmp_path):
    """A TLS SuperLink with SuperNode authentication, as a deployment run starts it (on loopback): a SuperNode whose key
    was registered connects; one whose key was not, and one that trusts another CA, are refused and exit."""
    from fedpeft.federated.deployment.credentials import write_credentials
    from fedpeft.federated.deployment.engine import (
        CONNECTION,
        _free_port,
        _Processes,
        _wait_for_port,
        register_supernodes,
        superlink_tls_args,
        supernode_tls_args,
        write_cli_config,
    )
    from fedpeft.federated.flower_bridge import FLOWER_ENV

    cred = write_credentials(tmp_path / "cred", ["127.0.0.1"], 2)
    other = write_credentials(tmp_path / "other", ["127.0.0.1"], 0)
    bin_dir = os.path.dirname(sys.executable)
    env = os.environ | FLOWER_ENV
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = _Processes(logs)
    port = _free_port("127.0.0.1")
    try:
        processes.start("superlink", [f"{bin_dir}/flower-superlink", *superlink_tls_args(cred), "--host", "127.0.0.1", "--port",
                                      str(port), "--disable-runtime-dependency-installation"], env | {"FLWR_HOME": str(tmp_path / "sl")})
        _wait_for_port("127.0.0.1", port, 60, processes)
        cli = tmp_path / "cli"
        cli.mkdir()
        write_cli_config(cli, f"127.0.0.1:{port}", cred.ca_certificate)
        register_supernodes(Path(bin_dir), cli, cred.supernode_public_keys[:1], env)  # node 0 only
        nodes = {}
        for name, node, ca in (("registered", 0, None), ("unregistered", 1, None), ("other-ca", 0, other.ca_certificate)):
            cmd = [f"{bin_dir}/flower-supernode", *supernode_tls_args(cred, node, ca), "--superlink", f"127.0.0.1:{port}",
                   "--port", str(_free_port("127.0.0.1")), "--max-retries", "2"]
            nodes[name] = processes.start(name, cmd, env | {"FLWR_HOME": str(tmp_path / name)})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (nodes["unregistered"].poll() is None or nodes["other-ca"].poll() is None):
            time.sleep(0.5)
        assert nodes["unregistered"].poll() not in (None, 0) and nodes["other-ca"].poll() not in (None, 0)
        assert nodes["registered"].poll() is None, (logs / "registered.log").read_text()[-2000:]
        listed = subprocess.run([f"{bin_dir}/flwr", "supernode", "list", CONNECTION, "--format", "json"], capture_output=True,
                                text=True, env=env | {"FLWR_HOME": str(cli)}, timeout=120)
        online = [n for n in json.loads(listed.stdout)["nodes"] if n["status"] == "online"]
        assert len(online) == 1, listed.stdout
        superlink_log = (logs / "superlink.log").read_text(errors="replace")
        assert "No SuperNode found with the given public key" in superlink_log
        assert "CERTIFICATE_VERIFY_FAILED" in (logs / "other-ca.log").read_text(errors="replace")
    finally:
        processes.stop_all()


def test_listening_sockets_are_read_per_process():
    from fedpeft.federated.deployment.engine import listening_sockets

    with socket.socket() as listening, socket.socket() as bound_only:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound_only.bind(("127.0.0.1", 0))  # bound, not listening: not listed
        found = listening_sockets(os.getpid())
        assert ("127.0.0.1", listening.getsockname()[1]) in found
        assert ("127.0.0.1", bound_only.getsockname()[1]) not in found
    assert listening_sockets(2**22 + 12345) == []  # no such process
