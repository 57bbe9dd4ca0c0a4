"""Fixtures for the real-browser tests: Debian's Chromium driven by Playwright, a headless JupyterLab on loopback.

Nothing is downloaded: Chromium comes from Debian (`tools/install_browser.sh`), Playwright only drives it
(`executable_path`), JupyterLab and its widget extension are the project's own dependencies.
Screenshots go to runs/browser/ (gitignored; CI keeps it as an artefact; PWATTR_ARTIFACTS moves it). Without Chromium or Playwright every test here is skipped,
with the reason and the command that fixes it; with PWATTR_REQUIRE_BROWSER=1 (CI) they fail instead.
"""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get('PWATTR_ARTIFACTS', ROOT / 'runs' / 'browser'))
CHROMIUM = os.environ.get('PWATTR_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
# No background connections: this machine's network is closed and Chromium would retry them.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-default-apps', '--disable-extensions', '--mute-audio']

def _missing()->str|None:
    "Why the browser tests cannot run here, or None"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: run tools/install_browser.sh (apt-get install -y chromium chromium-driver; pip install playwright)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "the Python package playwright is not installed: run tools/install_browser.sh"
    return None

def _require():
    "Skip (or, with PWATTR_REQUIRE_BROWSER=1 as in CI, fail) when the browser is missing"
    why = _missing()
    if why and os.environ.get('PWATTR_REQUIRE_BROWSER'): pytest.fail(f"PWATTR_REQUIRE_BROWSER is set but {why}")
    if why: pytest.skip(why)

@pytest.fixture(scope='session')
def artifacts()->Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True); return ARTIFACTS

@pytest.fixture(scope='session')
def browser():
    _require()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()

@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={'width': 1400, 'height': 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class Lab:
    "A JupyterLab server started for the tests (loopback, random port, random token, throwaway config)"
    def __init__(self, root:Path, port:int, token:str, proc, log:Path):
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log
    @property
    def base(self)->str: return f'http://127.0.0.1:{self.port}'
    def url(self, nb:str, workspace:str|None=None)->str:
        "The notebook's URL; with `workspace`, in a fresh workspace of that name (no tabs left open by another test)"
        if workspace: return f'{self.base}/lab/workspaces/{workspace}/tree/{nb}?reset&token={self.token}'
        return f'{self.base}/lab/tree/{nb}?token={self.token}'
    def set_theme(self, theme:str):
        "Choose JupyterLab's theme ('JupyterLab Light' / 'JupyterLab Dark') for the pages opened from now on"
        d = self.root.parent / 'settings' / '@jupyterlab' / 'apputils-extension'; d.mkdir(parents=True, exist_ok=True)
        (d / 'themes.jupyterlab-settings').write_text(json.dumps({'theme': theme}))
    def log_tail(self, n:int=3000)->str: return self.log.read_text(errors='replace')[-n:]
    def kernel(self, path:str)->tuple|None:
        "(kernel id, execution state) of the session open on notebook `path` (relative to the root), by the REST API; None if none"
        try:
            with urllib.request.urlopen(f'{self.base}/api/sessions?token={self.token}', timeout=5) as r: sessions = json.load(r)
        except OSError: return None
        for s in sessions:
            if s.get('path') == path and s.get('kernel'): return s['kernel']['id'], s['kernel'].get('execution_state')
        return None
    def wait_ready(self, timeout:float=60):
        "Block until the server answers /api/status (it boots while the browser starts)"
        t0 = time.time()
        while True:
            if self.proc.poll() is not None: pytest.fail(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f'{self.base}/api/status?token={self.token}', timeout=2) as r:
                    if r.status == 200: return self
            except OSError: pass
            if time.time() - t0 > timeout: pytest.fail(f"JupyterLab did not answer on port {self.port} within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.3)

@pytest.fixture(scope='session')
def jupyterlab(tmp_path_factory):
    "Start `jupyter lab` headless on 127.0.0.1 with its own config, data and runtime dirs (call `.wait_ready()`); stop it afterwards"
    _require()
    tmp = tmp_path_factory.mktemp('lab')
    root, cfg, data, run = tmp / 'notebooks', tmp / 'config', tmp / 'data', tmp / 'runtime'
    for d in (root, cfg / 'labconfig', data, run): d.mkdir(parents=True)
    # no "news" prompt, no update checks: nothing may reach the network, no dialog may cover the notebook
    (cfg / 'labconfig' / 'page_config.json').write_text(json.dumps({'disabledExtensions': {
        '@jupyterlab/apputils-extension:announcements': True}}))
    # every cell attached to the page (no windowing), so a test can click any cell of a long notebook; the preferred
    # kernel starts without a 'Select Kernel' dialog (accepting one late replaced the kernel under the cells in CI)
    nb_settings = tmp / 'settings' / '@jupyterlab' / 'notebook-extension'; nb_settings.mkdir(parents=True)
    (nb_settings / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none', 'autoStartDefaultKernel': True}))
    (cfg / 'jupyter_server_config.json').write_text(json.dumps({'ServerApp': {'jpserver_extensions': {
        'jupyter_lsp': False, 'jupyter_server_terminals': False}}}))      # not needed; faster start
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ('IN_TEST', 'MPLBACKEND', 'JUPYTER_PATH')}
    env.update(JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_DATA_DIR=str(data), JUPYTER_RUNTIME_DIR=str(run),
               IPYTHONDIR=str(tmp / 'ipython'), OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])))
    log = tmp / 'jupyterlab.log'
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
           f'--LabApp.workspaces_dir={tmp / "workspaces"}', f'--LabApp.user_settings_dir={tmp / "settings"}',
           '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
           '--LabApp.extension_manager=readonly', '--ServerApp.terminals_enabled=False']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')   # CI containers run as root
    with open(log, 'wb') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    lab = Lab(root, port, token, proc, log)
    try:
        yield lab
    finally:
        proc.terminate()                              # the server shuts its kernels down on SIGTERM
        try: proc.wait(15)
        except subprocess.TimeoutExpired: pass
        try: os.killpg(proc.pid, signal.SIGKILL)     # anything left in the group the server started
        except (ProcessLookupError, PermissionError): pass
        shutil.copy(log, ARTIFACTS / 'jupyterlab.log') if ARTIFACTS.exists() else None
