"""The worker process runner: protocol parsing, states, cancel (whole process tree), errors, and the
real engine's worker run through it. No Slicer application; a tiny fake worker stands in for the
engine where the test is about the runner."""

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SelfSupCTDenoise"))

from SelfSupCTDenoiseSlicer.runner import RunState, WorkerRunner, parseWorkerLine  # noqa: E402

FAKE_WORKER = textwrap.dedent('''
    """Fake worker: speaks the worker protocol; FAKE_MODE picks the behaviour."""
    import json, os, signal, subprocess, sys, time
    import SimpleITK as sitk

    mode = os.environ.get("FAKE_MODE", "ok")
    request = json.load(open(sys.argv[sys.argv.index("--request") + 1]))
    base = os.path.dirname(os.path.abspath(sys.argv[sys.argv.index("--request") + 1]))

    def emit(**payload):
        print(json.dumps(payload), flush=True)

    def progress(phase, step, total, loss=None):
        emit(event="progress", phase=phase, step=step, total=total, loss=loss, eta_s=None, message="")

    print("a library prints something", flush=True)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "term_then_ok":
        def finish_anyway(*_):
            emit(event="result", info={"late": True})
            sys.exit(0)
        signal.signal(signal.SIGTERM, finish_anyway)
    if mode in ("slow", "ignore_term", "term_then_ok"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"WORKER {os.getpid()}", flush=True)
        print(f"GRANDCHILD {child.pid}", flush=True)
        for step in range(100000):
            progress("adapt", step, 100000)
            time.sleep(0.02)
    if mode == "error":
        emit(event="error", kind="input", message="The input is not CT.")
        sys.exit(1)
    if mode == "crash":
        print("Traceback (most recent call last):", flush=True)
        print("ZeroDivisionError: division by zero", flush=True)
        sys.exit(2)
    if mode == "cancel_self":
        emit(event="cancelled", message="parent gone")
        sys.exit(3)
    if mode == "garbage":
        for line in ["{not json", '{"event": "progress", "phase": "adapt", "bogus": 1}', '["a", "list"]',
                     '{"event": "unknown"}', "\\x00\\x01 binary-ish", "   ", '{"event": "progress"}']:
            print(line, flush=True)
    progress("loading", 0, 0)
    for step in range(4):
        progress("adapt", step, 3, loss=0.1 / (step + 1))
    image = sitk.ReadImage(os.path.join(base, request["input"]))
    array = sitk.GetArrayFromImage(image)
    total = array.shape[0]
    for index in range(total + 1):
        progress("infer", index, total)
    if mode == "no_result":
        sys.exit(0)
    out = sitk.GetImageFromArray((array - 10).astype(array.dtype))
    out.CopyInformation(image)
    sitk.WriteImage(out, os.path.join(base, request["output"]))
    if request.get("noise_map"):
        noise = sitk.GetImageFromArray(array.astype("float32") * 0 + 10)
        noise.CopyInformation(image)
        sitk.WriteImage(noise, os.path.join(base, request["noise_map"]))
    emit(event="result", info={"format": "SelfSupCTDenoise provenance", "device": "fake", "seed": 0,
                               "parameters": request["config"], "bundle": {"name": "fake", "sha256": "0" * 64},
                               "run": {"adaptation": None}, "note": "research use, not for diagnosis"})
''')


#: Stands in for Windows' PythonSlicer: a launcher that runs the real interpreter as its child.
FAKE_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@pytest.fixture
def fake_worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("fake") / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return path


def make_runner(fake_worker, mode="ok", tmp_path=None, **kwargs):
    env = dict(os.environ, FAKE_MODE=mode)
    return WorkerRunner(command=[sys.executable, str(fake_worker)], environment=env,
                        tempRoot=str(tmp_path) if tmp_path else None, **kwargs)


def write_input(runner, shape=(3, 20, 24)):
    import SimpleITK as sitk

    array = (np.arange(np.prod(shape)).reshape(shape) % 200 - 100).astype(np.int16)
    runner.createWorkDir()
    sitk.WriteImage(sitk.GetImageFromArray(array), str(runner.inputPath))
    return array


def drain_until_finished(runner, timeout=20.0):
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = runner.state
        messages += runner.poll()
        if state.finished:
            return messages
        time.sleep(0.01)
    raise AssertionError("runner did not finish")


def pid_alive(pid):
    """Running and not a zombie (POSIX; no psutil needed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:
        return "\tZ" not in next(line for line in status.read_text(encoding="utf-8").splitlines() if line.startswith("State:"))
    except OSError:
        return True


# -- protocol parsing --------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["", "   ", "hello", "{not json", "[1, 2]", '"text"', "null",
                                  '{"event": "unknown"}', '{"no_event": 1}', '{"event": "progress"}',
                                  '{"event": "progress", "phase": "adapt", "step": "3"}',
                                  '{"event": "progress", "phase": "adapt", "loss": "low"}', "\x00\x01\ufffd"])
def test_parse_worker_line_ignores_garbage(line):
    assert parseWorkerLine(line) is None


def test_parse_worker_line_reads_protocol_messages():
    progress = parseWorkerLine('{"event": "progress", "phase": "adapt", "step": 3, "total": 10, "loss": 0.5}\n')
    assert progress["progressEvent"].phase == "adapt" and progress["progressEvent"].step == 3
    assert parseWorkerLine('{"event": "result", "info": {"a": 1}}')["info"] == {"a": 1}
    assert parseWorkerLine('{"event": "error", "kind": "input", "message": "m"}')["kind"] == "input"


# -- runs ----------------------------------------------------------------------------------------

def test_completed_run_reports_progress_result_and_keeps_outputs_until_cleanup(fake_worker, tmp_path):
    runner = make_runner(fake_worker, tmp_path=tmp_path)
    array = write_input(runner)
    runner.start({"steps": 3}, bundlePath=None, noiseMap=True)
    assert runner.state is RunState.RUNNING
    messages = drain_until_finished(runner)
    result = runner.waitForCompletion(5)
    assert result.state is RunState.COMPLETED and result.returnCode == 0
    assert result.info["parameters"] == {"steps": 3}
    phases = [m["progressEvent"].phase for m in messages if m["event"] == "progress"]
    assert phases[0] == "loading" and "adapt" in phases and phases[-1] == "infer"
    assert "a library prints something" in runner.logTail
    assert messages[-1] == {"event": "finished", "state": RunState.COMPLETED}
    assert runner.outputPath.is_file() and runner.noiseMapPath.is_file()
    request = json.loads(runner.requestPath.read_text(encoding="utf-8"))
    assert request["input"] == "input.nrrd" and request["parent_pid"] == os.getpid()
    import SimpleITK as sitk
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(runner.outputPath))), array - 10)
    work_dir = runner.workDir
    runner.cleanup()
    runner.cleanup()  # twice is fine
    assert not work_dir.exists()


def test_garbage_lines_are_tolerated(fake_worker, tmp_path):
    runner = make_runner(fake_worker, "garbage", tmp_path)
    write_input(runner)
    runner.start({})
    messages = drain_until_finished(runner)
    assert runner.result.state is RunState.COMPLETED
    assert {m["event"] for m in messages} <= {"progress", "result", "log", "finished"}
    assert "{not json" in runner.logTail
    runner.cleanup()


@pytest.mark.parametrize("mode, kind, text", [
    ("error", "input", "The input is not CT."),
    ("crash", "crash", "exit code 2"),
    ("no_result", "crash", "exit code 0"),
])
def test_failures_give_a_message_and_remove_the_temp_folder(fake_worker, tmp_path, mode, kind, text):
    runner = make_runner(fake_worker, mode, tmp_path)
    write_input(runner)
    runner.start({})
    result = runner.waitForCompletion(20)
    assert result.state is RunState.FAILED and result.errorKind == kind and text in result.message
    assert "Traceback" not in result.message
    assert not runner.workDir.exists()


def test_crash_message_quotes_the_last_output_line(fake_worker, tmp_path):
    runner = make_runner(fake_worker, "crash", tmp_path)
    write_input(runner)
    runner.start({})
    assert "ZeroDivisionError: division by zero" in runner.waitForCompletion(20).message


def test_worker_that_cancels_itself_ends_cancelled(fake_worker, tmp_path):
    runner = make_runner(fake_worker, "cancel_self", tmp_path)
    write_input(runner)
    runner.start({})
    assert runner.waitForCompletion(20).state is RunState.CANCELLED


def test_missing_executable_fails_cleanly(tmp_path):
    runner = WorkerRunner(command=[str(tmp_path / "no-such-python")], tempRoot=str(tmp_path))
    runner.createWorkDir()
    runner.start({})
    result = runner.waitForCompletion(1)
    assert result.state is RunState.FAILED and result.errorKind == "launch"
    assert not runner.workDir.exists()


def test_runner_is_single_use(fake_worker, tmp_path):
    runner = make_runner(fake_worker, tmp_path=tmp_path)
    write_input(runner)
    runner.start({})
    runner.waitForCompletion(20)
    with pytest.raises(RuntimeError):
        runner.start({})
    runner.cleanup()


# -- cancel ----------------------------------------------------------------------------------------

def wait_for_grandchild(runner, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.poll()
        for line in runner.logTail:
            if line.startswith("GRANDCHILD "):
                return int(line.split()[1])
        time.sleep(0.01)
    raise AssertionError("fake worker did not start its child")


def _psutil_installed():
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(os.name != "posix", reason="process-tree checks use POSIX signals and /proc")
@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "no-psutil"])
@pytest.mark.parametrize("mode", ["slow", "ignore_term"])
def test_cancel_kills_the_whole_tree_within_two_seconds(fake_worker, tmp_path, mode, with_psutil, monkeypatch):
    if with_psutil and not _psutil_installed():
        pytest.skip("psutil not installed (optional)")
    if not with_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now fails: process-group path
    runner = make_runner(fake_worker, mode, tmp_path, killGraceS=1.0)
    write_input(runner)
    runner.start({})
    grandchild = wait_for_grandchild(runner)
    worker_pid = runner.pid
    start = time.monotonic()
    assert runner.cancel() is True
    assert time.monotonic() - start < 0.2  # cancel() itself never blocks the GUI
    assert runner.state in (RunState.CANCELLING, RunState.CANCELLED)
    result = runner.waitForCompletion(5)
    elapsed = time.monotonic() - start
    assert result.state is RunState.CANCELLED and elapsed < 2.0, elapsed
    time.sleep(0.2)
    assert not pid_alive(worker_pid) and not pid_alive(grandchild)
    assert not runner.workDir.exists()
    assert runner.cancel() is False


@pytest.mark.skipif(os.name != "posix", reason="process-tree checks use POSIX signals and /proc")
@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "no-psutil"])
def test_cancel_behind_a_launcher_kills_the_interpreter_and_its_child(fake_worker, tmp_path, with_psutil,
                                                                      monkeypatch):
    """Launcher -> worker -> grandchild, as PythonSlicer runs the real interpreter on Windows: cancel
    ends all three, with or without psutil (Slicer bundles none)."""
    if with_psutil and not _psutil_installed():
        pytest.skip("psutil not installed (optional)")
    if not with_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)
    env = dict(os.environ, FAKE_MODE="slow")
    runner = WorkerRunner(command=[sys.executable, "-c", FAKE_LAUNCHER, sys.executable, str(fake_worker)],
                          environment=env, tempRoot=str(tmp_path), killGraceS=1.0)
    write_input(runner)
    runner.start({})
    grandchild = wait_for_grandchild(runner)
    worker = int(next(line for line in runner.logTail if line.startswith("WORKER ")).split()[1])
    launcher = runner.pid
    assert len({launcher, worker, grandchild}) == 3 and all(map(pid_alive, (launcher, worker, grandchild)))
    runner.cancel()
    assert runner.waitForCompletion(5).state is RunState.CANCELLED
    time.sleep(0.2)
    assert [pid for pid in (launcher, worker, grandchild) if pid_alive(pid)] == []


class _FakeWindowsLauncher:
    """A Popen stand-in for PythonSlicer on Windows: terminating it ends the launcher only; the real
    interpreter (which holds the output pipe) runs on until its tree is killed."""

    def __init__(self, command, **kwargs):
        import threading

        self.command, self.kwargs = command, kwargs
        self.pid, self.returncode = 4321, None
        self.treeKilled = threading.Event()
        self.stdout = self._lines()

    def _lines(self):
        yield '{"event": "progress", "phase": "adapt", "step": 1, "total": 100}\n'
        self.treeKilled.wait(10)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        self.treeKilled.wait(10)
        self.returncode = 1
        return 1

    def terminate(self):
        self.returncode = 1  # the launcher is gone; its child is not

    kill = terminate


def pretend_windows(monkeypatch):
    """sys.platform and the Windows-only parts of `subprocess`, so the Windows branch runs here."""
    import subprocess

    class StartupInfo:
        dwFlags, wShowWindow = 0, 1

    monkeypatch.setattr(sys, "platform", "win32")
    for name, value in (("STARTUPINFO", StartupInfo), ("STARTF_USESHOWWINDOW", 1), ("SW_HIDE", 0),
                        ("CREATE_NO_WINDOW", 0x08000000), ("CREATE_NEW_PROCESS_GROUP", 0x200)):
        monkeypatch.setattr(subprocess, name, value, raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)  # Slicer bundles no psutil


def assert_hidden_console(kwargs):
    import subprocess

    assert kwargs["creationflags"] & subprocess.CREATE_NO_WINDOW
    info = kwargs["startupinfo"]
    assert info.dwFlags & subprocess.STARTF_USESHOWWINDOW and info.wShowWindow == subprocess.SW_HIDE


def test_windows_cancel_kills_the_tree_with_a_hidden_taskkill_while_the_launcher_lives(tmp_path, monkeypatch):
    import subprocess

    pretend_windows(monkeypatch)
    launched, commands = [], []

    def popen(command, **kwargs):
        launched.append(_FakeWindowsLauncher(command, **kwargs))
        return launched[-1]

    def run(command, **kwargs):
        launcher = launched[0]
        commands.append((list(command), kwargs, launcher.returncode is None))
        if command[0] == "taskkill" and launcher.returncode is None:
            launcher.treeKilled.set()  # /T finds the interpreter through its living parent
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(subprocess, "run", run)
    runner = WorkerRunner(command=["PythonSlicer", "-m", "worker"], tempRoot=str(tmp_path), killGraceS=0.3)
    runner.createWorkDir()
    runner.start({})
    assert_hidden_console(launched[0].kwargs)
    assert launched[0].kwargs["creationflags"] & subprocess.CREATE_NEW_PROCESS_GROUP
    assert runner.cancel() is True
    assert runner.waitForCompletion(5).state is RunState.CANCELLED
    command, kwargs, launcherAlive = commands[0]
    assert command == ["taskkill", "/T", "/F", "/PID", "4321"] and launcherAlive
    assert_hidden_console(kwargs)
    assert launched[0].treeKilled.is_set()


def test_cancelled_result_is_not_overwritten_by_a_later_exit_code(fake_worker, tmp_path):
    runner = make_runner(fake_worker, "term_then_ok", tmp_path)
    write_input(runner)
    runner.start({})
    wait_for_grandchild(runner)
    runner.cancel()
    result = runner.waitForCompletion(5)
    assert result.state is RunState.CANCELLED and "Cancelled by the user" in result.message
    runner.cleanup()


def test_wait_for_completion_times_out(fake_worker, tmp_path):
    runner = make_runner(fake_worker, "slow", tmp_path)
    write_input(runner)
    runner.start({})
    with pytest.raises(TimeoutError):
        runner.waitForCompletion(0.2)
    runner.cleanup()
    assert runner.state is RunState.CANCELLED and not runner.workDir.exists()


def test_main_thread_never_blocks_while_the_worker_runs(fake_worker, tmp_path):
    """What the GUI timer does: poll every 20 ms; no poll() call may take long."""
    runner = make_runner(fake_worker, "slow", tmp_path)
    write_input(runner)
    runner.start({})
    # the 1.5 s of polling start with the worker's first event: a loaded machine may take seconds to
    # start a Python process, which says nothing about the main thread
    longest, events, deadline = 0.0, 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        start = time.perf_counter()
        got = len(runner.poll())
        longest = max(longest, time.perf_counter() - start)
        if got and not events:
            deadline = time.monotonic() + 1.5
        events += got
        time.sleep(0.02)
    runner.cancel()
    runner.waitForCompletion(5)
    assert events > 10 and longest < 0.05, (events, longest)


# -- the real worker ----------------------------------------------------------------------------

def real_runner(tmp_path, **kwargs):
    return WorkerRunner(pythonPath=[str(ROOT / "SelfSupCTDenoise")], tempRoot=str(tmp_path), **kwargs)


def test_real_worker_refuses_a_bad_request_without_loading_torch(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    from subprocess import run
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SelfSupCTDenoise"))
    done = run([sys.executable, "-m", "SelfSupCTDenoiseLib.commands.worker", "--request", str(bad)],
               capture_output=True, text=True, env=env, timeout=60)
    message = parseWorkerLine(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and message["event"] == "error" and message["kind"] == "request"


def test_real_worker_reports_missing_torch_as_a_dependency_error(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; "
            "from SelfSupCTDenoiseLib.commands.worker import main; sys.exit(main(sys.argv[1:]))")
    runner = real_runner(tmp_path, command=[sys.executable, "-c", code])
    write_input(runner, shape=(3, 32, 32))
    runner.start({})
    result = runner.waitForCompletion(60)
    assert result.state is RunState.FAILED and result.errorKind == "dependency"
    assert "torch" in result.message and "Traceback" not in result.message


def test_real_engine_runs_through_the_runner(tmp_path, tiny_bundle):
    import SimpleITK as sitk
    from SelfSupCTDenoiseLib.data.phantom import noisy_pair

    ldct, _ = noisy_pair(4, 48, 30.0, seed=3)
    array = np.round(ldct).astype(np.int16)
    runner = real_runner(tmp_path)
    runner.createWorkDir()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(runner.inputPath))
    config = {"steps": 4, "period": 2, "batch_size": 4, "patch_size": 32, "device": "cpu"}
    runner.start(config, bundlePath=str(tiny_bundle.path), noiseMap=True)
    messages = drain_until_finished(runner, timeout=120)
    result = runner.result
    assert result.state is RunState.COMPLETED, result.message
    phases = {m["progressEvent"].phase for m in messages if m["event"] == "progress"}
    assert {"loading", "adapt", "infer"} <= phases
    denoised = sitk.GetArrayFromImage(sitk.ReadImage(str(runner.outputPath)))
    noise = sitk.GetArrayFromImage(sitk.ReadImage(str(runner.noiseMapPath)))
    assert denoised.shape == array.shape and noise.shape == array.shape
    assert result.info["bundle"]["sha256"] == tiny_bundle.sha256 and result.info["parameters"]["steps"] == 4
    runner.cleanup()


def _long_request(tmp_path, bundle, parent_pid=None):
    import SimpleITK as sitk
    from SelfSupCTDenoiseLib.commands.worker import make_request
    from SelfSupCTDenoiseLib.data.phantom import noisy_pair

    ldct, _ = noisy_pair(3, 48, 30.0, seed=4)
    sitk.WriteImage(sitk.GetImageFromArray(np.round(ldct).astype(np.int16)), str(tmp_path / "in.nrrd"))
    config = {"steps": 100000, "period": 10, "batch_size": 4, "patch_size": 32, "device": "cpu"}
    request = make_request("in.nrrd", "out.nrrd", "noise.nrrd", str(bundle.path), config, parent_pid=parent_pid)
    (tmp_path / "request.json").write_text(json.dumps(request))
    return tmp_path / "request.json"


def _start_worker(request):
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT / "SelfSupCTDenoise"), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "SelfSupCTDenoiseLib.commands.worker", "--request", str(request)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _read_until_adapting(proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        message = parseWorkerLine(line)
        if message and message["event"] == "progress" and message["progressEvent"].phase == "adapt":
            return
        assert time.monotonic() < deadline, "worker never started adapting"
    raise AssertionError("worker ended before adapting")


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_real_worker_exits_3_on_sigterm_without_writing_outputs(tmp_path, tiny_bundle):
    import signal

    proc = _start_worker(_long_request(tmp_path, tiny_bundle))
    _read_until_adapting(proc)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 3 and time.monotonic() - start < 2.0
    assert parseWorkerLine(rest.strip().splitlines()[-1])["event"] == "cancelled"
    assert not (tmp_path / "out.nrrd").exists() and not (tmp_path / "noise.nrrd").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX process ids")
def test_real_worker_stops_when_its_parent_is_gone(tmp_path, tiny_bundle):
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    proc = _start_worker(_long_request(tmp_path, tiny_bundle, parent_pid=gone.pid))
    rest = proc.communicate(timeout=60)[0]  # would adapt for 100000 steps if nobody noticed
    assert proc.returncode == 3, rest[-500:]
    assert parseWorkerLine(rest.strip().splitlines()[-1])["event"] == "cancelled"
