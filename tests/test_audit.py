"The console command: exit codes, errors that name what was wrong, the presets listing."
import subprocess, sys
from pathlib import Path
import pytest
from pwattr.audit import audit, parse_methods, METHODS

BIN = Path(sys.executable).parent / 'pwattr'

def run(*args):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)

def test_presets_lists_every_preset():
    r = run('presets')
    assert r.returncode == 0, r.stderr
    from pwattr.presets import PRESETS
    for name in PRESETS: assert name in r.stdout

def test_bad_preset_names_close_match_and_fails():
    r = run('audit', '--preset', 'fmnist-mpl', '--no_progress')
    assert r.returncode == 2 and 'fmnist-mlp' in r.stderr and 'Traceback' not in r.stderr

def test_bad_method_names_the_choices():
    with pytest.raises(ValueError, match='tracinn') as e: parse_methods('trak,tracinn')
    assert all(m in str(e.value) for m in METHODS)

def test_missing_ground_truth_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match='pwattr.groundtruth --preset fmnist-mlp'):
        audit('fmnist-mlp', gt=tmp_path / 'none.npz', out=tmp_path / 'out', log=None)
    r = run('audit', '--gt', str(tmp_path / 'none.npz'), '--out', str(tmp_path / 'out'), '--no_progress')
    assert r.returncode == 2 and 'pwattr.groundtruth --preset fmnist-mlp' in r.stderr

def test_unknown_option_is_an_error():
    r = run('audit', '--bogus', '1')
    assert r.returncode == 2 and 'bogus' in r.stderr
