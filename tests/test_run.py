"One run object: `TrainedModel` trains, caches and loads a preset's model for the audit, mislabel detection and semantic decoupling."
import json
from pathlib import Path
import torch
from pwattr.presets import get_preset
from pwattr.audit import AuditRun, TrainedModel, RunSettings, model_file
from pwattr.groundtruth import GroundTruth, GT_DIR

torch.set_num_threads(1)

def test_audit_and_semantic_share_one_model_file(tmp_path):
    "AuditRun trains through TrainedModel into the file semantic_study reads (`model_file`), with its settings beside it"
    gt = GroundTruth.load(GT_DIR / 'fmnist-mlp.npz')
    run = AuditRun('fmnist-mlp', gt, tmp_path, log=None, progress=False)
    test_path = run.cache / model_file(0)
    assert run.trained_model.path == test_path and test_path.name == 'model-s0.pt'    # the audit's original file name
    assert AuditRun('fmnist-mlp', gt, tmp_path, seed=2, n_checkpoints=8, log=None).trained_model.path.name == 'model-s2-c8.pt'

def test_trained_model_settings_and_reload(tmp_path):
    p = get_preset('fmnist-mlp').with_config(data={'n_train': 120, 'n_test': 30}, recipe={'epochs': 1})
    tr = p.load()[0]
    logs = []
    tm = TrainedModel(p, tr, tmp_path / model_file(3), seed=3, n_checkpoints=2, progress=False, log=logs.append)
    ref = p.train(tr, seed=3, checkpoints=2, progress=False).model.eval()          # independent: the preset's trainer directly
    x = tr.tensors['x'][:16]
    with torch.no_grad(): assert torch.equal(tm.model()(x), ref(x))
    st = json.loads((tmp_path / 'model-s3.json').read_text())
    assert st == dict(preset='fmnist-mlp', config_hash=p.config_hash, seed=3, n_checkpoints=2, data=tr.name)
    assert RunSettings.load(tmp_path / 'model-s3.json') == tm.settings
    logs2 = []
    again = TrainedModel(p, tr, tmp_path / model_file(3), seed=3, n_checkpoints=2, log=logs2.append)
    with torch.no_grad(): assert torch.equal(again.model()(x), ref(x))
    assert logs[0].startswith('[done') and logs2 == ['[cached] train fmnist-mlp']

def test_settings_beside_each_cached_result(tmp_path):
    "Every stage AuditRun caches has its settings beside it (`<name>.json`): the model's RunSettings plus the stage's own parts"
    import numpy as np
    p = get_preset('fmnist-mlp').with_config(data={'n_train': 120, 'n_test': 40}, recipe={'epochs': 1})
    tr, te = p.load()
    rng = np.random.default_rng(0)
    gt = GroundTruth(rng.random((6, len(tr))) < 0.5, np.zeros((6, 1)), rng.normal(size=(6, 1, 4)), list(te.ids[:4]), 'margin')
    run = AuditRun(p, gt, tmp_path, proj_dim=8, n_learn=5, log=None, progress=False)
    ev, _ = run.contributions('trak')
    js = sorted(f.name for f in run.cache.glob('*.json'))
    pts = sorted(f.name for f in run.cache.glob('*.pt'))
    assert [f[:-5] for f in js] == [f[:-3] for f in pts], (js, pts)                  # one settings file per cached result
    c = next(f for f in run.cache.glob('contrib-trak-*.json'))
    st = json.loads(c.read_text())
    assert {k: st[k] for k in ('stage', 'method', 'preset', 'config_hash', 'seed', 'proj_dim', 'n_learn', 'n_eval', 'splits')} == dict(
        stage='contributions', method='trak', preset='fmnist-mlp', config_hash=p.config_hash, seed=0, proj_dim=8, n_learn=5, n_eval=4,
        splits=['eval', 'learn'])
    f = json.loads(next(run.cache.glob('features-*-train.json')).read_text())
    assert (f['stage'], f['split'], f['n']) == ('features', 'train', 120)
    assert json.loads((run.cache / 'model-s0.json').read_text()) == dict(preset='fmnist-mlp', config_hash=p.config_hash, seed=0,
                                                                          n_checkpoints=4, data=tr.name)
