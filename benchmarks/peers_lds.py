"""pwattr's unweighted base methods vs the peers' (traker / dattri / kronfluence) by LDS on the same ground truth.

One command reproduces everything (33 min measured on one thread of a shared 2-core machine, dattri TracInCP alone 16 min; the peers part runs in the peers venv as a child):

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_lds.py

    # times only: pwattr and each peer alternated in one process (3 runs each, medians; needs the peers in this venv,
    # pip install -e '.[peers]'), record in benchmarks/results/peers_lds.json
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_lds.py --part timing --only ekfac-kronfluence,trak-traker

    # the two steps separately (the same as the command above):
    nice -n 10 env OMP_NUM_THREADS=1 /work/peers/bin/python benchmarks/peers_lds.py --part peers   # peers' scores -> .npy
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_lds.py --part lds            # pwattr's scores + the table

    # after a code change: recompute peers' scores (all 100 queries: the training side costs the same for fewer) and compare
    # them with the saved ones, writing nothing (traker + kronfluence + dattri Grad-Dot: 5 min)
    nice -n 10 env OMP_NUM_THREADS=1 /work/peers/bin/python benchmarks/peers_lds.py --check 100 --only trak-traker,ekfac-kronfluence,graddot-dattri

The peers venv is set up as in `benchmarks/methods.py --help` (dattri 0.3.0, traker 0.3.2, kronfluence 1.0.1, pwattr -e). The peers'
calls (traker_scores, dattri_tracin_scores, dattri_model_fns, kronfluence_ekfac_scores) live in benchmarks/methods.py, shared
with its `--part peers`.

What is compared, all on preset fmnist-mlp, its seed-0 model trained exactly as the audit trains it (`AuditRun.trained`:
`get_preset('fmnist-mlp').train(train, seed=0, checkpoints=4)`, deterministic, cached under <out>/cache/<config hash>/),
the committed LDS ground truth pwattr/assets/groundtruth/fmnist-mlp.npz (50 subsets x 2 seeds, margin output) and all of its
evaluation queries against all 5,000 training examples:

| method   | pwattr (as `pwattr.recipes`, `AuditRun`)               | peer, with the settings matched where it allows              |
|----------|-----------------------------------------------------------|--------------------------------------------------------------|
| TracInCP | CE-loss grads at the 4 checkpoints, weighted by their lrs,| dattri TracInAttributor, same 4 checkpoints and lr weights,  |
|          | sparse projection 512 dims x 3 groups = 1536              | its own dense Gaussian projection to 1536 dims               |
| Grad-Dot | CE-loss grads of the final model, same projection         | dattri TracInAttributor, final model, weight 1, 1536 dims     |
| TRAK     | margin grads of the final model, same projection, Q=1-p,  | traker TRAKer (its CPU Gaussian projector, 1536 dims) and     |
|          | ridge lam = 0.1 x mean diag(Phi^T Phi)                    | dattri TRAKAttributor (1536 dims); both given the same ridge  |
|          |                                                           | rule, lam = 0.1 x mean diag of *their own* Phi^T Phi          |
| EK-FAC   | all 3 Linear layers, unprojected, sampled-label Fisher,   | kronfluence EK-FAC, sampled-label Fisher (its default),       |
|          | damping 0.1 x mean corrected eigenvalue per layer         | damping_factor=None (= 0.1 x mean eigenvalue), unprojected    |

Output (under --out, default runs/peers_lds): scores/<method>-<library>.npy ([queries, 5000] float64 score matrices, rows in
the ground truth's query order), peers.json (the peers' times and settings), table.txt (the printed table), lds.json (one
record per row: method, library, lds, lo, hi, spearman_vs_pwattr, seconds) and meta.json (settings). LDS = pwattr.evaluate.lds
(95% bootstrap interval over queries, seed 0); Spearman vs pwattr = mean over queries of the per-query rank correlation over
the 5,000 training examples (benchmarks/methods.py `spearman`); seconds = wall time of everything a method needs after the
model is trained (gradients, projection, kernel / factors, scores), one run, on a shared machine (load from other jobs
shows up here). pwattr's times are measured on a fresh cache. Everything is seeded (model 0, projections 0, label sampling 0,
bootstrap 0). Rows 'pwattr, seed 1' (the noise floor; --no-noise-floor skips them) rerun pwattr on the same model with only its
own random draw changed (projection seed 1; EK-FAC: sampled-label seed 1): a peer that draws its own projection / labels cannot
agree with pwattr better than pwattr agrees with itself.
"""
import argparse, hashlib, importlib.metadata, importlib.util, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# reuse benchmarks/methods.py: its helpers and the peers' calls (shared with its --part peers; each peer is imported only when
# called, so this imports without the peers); loaded under its own name so 'methods' is not taken
_spec = importlib.util.spec_from_file_location('bench_methods', ROOT / 'benchmarks' / 'methods.py')
bench = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench)
timed, spearman, peer_available, quiet, loader = bench.timed, bench.spearman, bench._peer_available, bench.quiet, bench.loader
traker_scores, dattri_model_fns, dattri_tracin_scores, kronfluence_ekfac_scores = (
    bench.traker_scores, bench.dattri_model_fns, bench.dattri_tracin_scores, bench.kronfluence_ekfac_scores)

PRESET, SEED, PROJ_DIM, LAM_REL, N_CKPT = 'fmnist-mlp', 0, 512, 0.1, 4
PW_METHODS = ['tracin', 'graddot', 'trak', 'ekfac']          # names of pwattr.recipes
PEERS = {  # key -> (method, library, module to import); cheapest first, so a partial run keeps the most
    'ekfac-kronfluence': ('ekfac', 'kronfluence', 'kronfluence'),
    'trak-traker': ('trak', 'traker', 'trak'),
    'trak-dattri': ('trak', 'dattri', 'dattri'),
    'graddot-dattri': ('graddot', 'dattri', 'dattri'),
    'tracin-dattri': ('tracin', 'dattri', 'dattri'),
}
LABELS = {'tracin': 'TracInCP', 'graddot': 'Grad-Dot', 'trak': 'TRAK', 'ekfac': 'EK-FAC'}
PEER_PY = '/work/peers/bin/python'

def log(*a): print(*a, flush=True)

def audit_run(out, seed=SEED):
    "The audit's shared state for the preset (data, evaluation queries, groups, model cache under `out`)"
    from pwattr.audit import AuditRun
    from pwattr.groundtruth import GroundTruth, GT_DIR
    gt = GroundTruth.load(GT_DIR / f'{PRESET}.npz')
    # n_learn=1: the learning queries play no part here (evaluation-query scores do not depend on them); the audit's 100
    # would only add featurisation time to pwattr's rows
    return AuditRun(PRESET, gt, Path(out), proj_dim=PROJ_DIM, n_learn=1, n_checkpoints=N_CKPT, seed=seed,
                    progress=False, log=None)

def state_hash(sd:dict)->str:
    h = hashlib.sha256()
    for k in sorted(sd): h.update(k.encode()); h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

# ------------------------------------------------------------------------------------------------------------------------
# Peers (run with the peers venv)
# ------------------------------------------------------------------------------------------------------------------------
class Ctx:
    "What every peer needs: the trained model, its checkpoints, the data and the matched settings"
    def __init__(self, out, batch):
        from pwattr.features import Projector
        self.run = run = audit_run(out)
        tr = run.trained
        self.model, self.ckpts = run.model(), tr['checkpoints']       # ckpts: (step, lr, state_dict)
        self.final = {k: v.clone() for k, v in tr['state_dict'].items()}
        self.lrs = [float(c[1]) for c in self.ckpts]
        self.X, self.Y = run.train.tensors['x'], run.train.tensors['y']
        self.Xq, self.Yq = run.eval_q.tensors['x'], run.eval_q.tensors['y']
        self.N, self.Q = len(self.X), len(self.Xq)
        self.D = sum(Projector(PROJ_DIM).dims_for(run.groups))        # pwattr's total projected dims (512 x groups)
        self.P = sum(p.numel() for p in self.model.parameters())
        self.batch, self.hash = batch, state_hash(self.final)

def _dattri_proj(c):
    # a full dict every time: dattri 0.3.0 updates its module-level DEFAULT_PROJECTOR_KWARGS in place
    return {'proj_dim': c.D, 'proj_max_batch_size': 32, 'proj_seed': SEED, 'device': 'cpu'}

def peer_trak_traker(c, work):
    S, tf, ts, lam = traker_scores(c.model, c.X, c.Y, c.Xq, c.Yq, c.D, LAM_REL, batch=c.batch, work=work, seed=SEED,
                                   checkpoint=c.final)   # pwattr's ridge rule on traker's own features
    return S, tf, ts, {'lambda_reg': lam,
                       'setting': f"TRAKer image_classification (margin, Q=1-p), final model, its CPU projector (Gaussian) to "
                                  f"{c.D} dims, seed {SEED}, float32, lambda_reg = {LAM_REL} x mean diag(Phi^T Phi) = {lam:.4g}"}

def peer_trak_dattri(c, work):
    from dattri.task import AttributionTask
    from dattri.algorithm.trak import TRAKAttributor
    import dattri.algorithm.trak as dtrak; dtrak.tqdm = lambda it, **k: it
    dm, _, margin, p_correct = dattri_model_fns(c.model)
    task = AttributionTask(loss_func=margin, model=dm, checkpoints=[c.final])
    att = TRAKAttributor(task=task, correct_probability_func=p_correct, projector_kwargs=_dattri_proj(c), device='cpu',
                         regularization=0.0)
    # pwattr's ridge rule (lam_rel x mean diagonal of Phi^T Phi) on dattri's own projected training gradients: dattri reads
    # `regularization` right after its training pass, so it is kept up to date while the training gradients are projected
    acc, orig = {'ss': 0.0, 'on': True}, dtrak.random_project
    def rp(*a, **k):
        f = orig(*a, **k)
        def g(x, ensemble_id=0):
            y = f(x, ensemble_id=ensemble_id)
            if acc['on']: acc['ss'] += float((y.double() ** 2).sum()); att.regularization = LAM_REL * acc['ss'] / c.D
            return y
        return g
    dtrak.random_project = rp
    try:
        _, tf = quiet(lambda: timed(lambda: att.cache(loader(c.X, c.Y, c.batch))))
        acc['on'] = False
        S, ts = quiet(lambda: timed(lambda: att.attribute(loader(c.Xq, c.Yq, c.batch)).T.numpy()))
    finally: dtrak.random_project = orig
    return S, tf, ts, {'setting': f"TRAKAttributor, margin, Q=1-p, final model, dattri's CPU projector (normal) to {c.D} dims, "
                                  f"seed {SEED}, regularization = {LAM_REL} x mean diag(Phi^T Phi) = {att.regularization:.4g}",
                       'regularization': att.regularization}

def _peer_tracin_dattri(c, ckpts, weights):
    S, t = dattri_tracin_scores(c.model, ckpts, weights, c.X, c.Y, c.Xq, c.Yq, normalized=False,
                                projector_kwargs=_dattri_proj(c), batch=c.batch, query_batch=c.Q)
    return S, 0.0, t

def peer_tracin_dattri(c, work):
    S, tf, ts = _peer_tracin_dattri(c, [sd for _, _, sd in c.ckpts], c.lrs)
    return S, tf, ts, {'setting': f"TracInAttributor, CE loss, {len(c.ckpts)} checkpoints weighted by lrs "
                                  f"{[float(f'{l:.3g}') for l in c.lrs]}, dattri's projector (normal) to {c.D} dims per "
                                  f"checkpoint (ensemble_id = checkpoint), seed {SEED}"}

def peer_graddot_dattri(c, work):
    S, tf, ts = _peer_tracin_dattri(c, [c.final], [1.0])
    return S, tf, ts, {'setting': f"TracInAttributor, CE loss, final model, weight 1, dattri's projector (normal) to {c.D} dims, "
                                  f"seed {SEED}"}

def peer_ekfac_kronfluence(c, work):
    S, tf, ts = kronfluence_ekfac_scores(c.model, c.X, c.Y, c.Xq, c.Yq, empirical=False, batch=c.batch, work=work, seed=SEED)
    return S, tf, ts, {'setting': "EK-FAC on all 3 Linear layers (bias included), unprojected, CE loss for train and query, "
                                  "sampled-label (true) Fisher, label seed 0 (a different draw than pwattr's), "
                                  "damping_factor=None (0.1 x mean eigenvalue), float32 scores"}

PEER_FNS = {'trak-traker': peer_trak_traker, 'trak-dattri': peer_trak_dattri, 'tracin-dattri': peer_tracin_dattri,
            'graddot-dattri': peer_graddot_dattri, 'ekfac-kronfluence': peer_ekfac_kronfluence}

def part_peers(out:Path, only=None, resume=False, batch=1000):
    "Compute the peers' [Q, N] score matrices and save them as <out>/scores/<key>.npy, times in <out>/peers.json"
    torch.manual_seed(SEED); np.random.seed(SEED)
    out = Path(out); (out / 'scores').mkdir(parents=True, exist_ok=True)
    meta_path = out / 'peers.json'
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    t0 = time.time()
    c = Ctx(out, batch)
    log(f"peers part: {PRESET} seed-{SEED} model {c.hash} ({c.P} params), {c.N} training examples x {c.Q} evaluation queries, "
        f"{len(c.ckpts)} checkpoints (lrs {[f'{l:.3g}' for l in c.lrs]}), projection {c.D} dims, batch {batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); model ready in {time.time() - t0:.1f} s")
    for key in (only or PEERS):
        method, lib, mod = PEERS[key]
        path = out / 'scores' / f'{key}.npy'
        if resume and path.exists() and meta.get(key, {}).get('model') == c.hash:
            log(f"[{key}] kept {path} (--resume)"); continue
        why = peer_available(mod)
        if why:
            meta[key] = {'method': method, 'library': lib, 'skipped': why}; log(f"[{key}] SKIPPED: {why}")
        else:
            try:
                with tempfile.TemporaryDirectory(prefix='peers-lds-') as d:
                    torch.manual_seed(SEED)
                    S, tf, ts, info = PEER_FNS[key](c, Path(d))
                S = np.asarray(S, dtype=np.float64)
                if S.shape != (c.Q, c.N): raise ValueError(f"scores have shape {S.shape}, expected {(c.Q, c.N)}")
                if not np.isfinite(S).all(): raise ValueError(f"{(~np.isfinite(S)).sum()} non-finite scores")
                np.save(path, S)
                ver = importlib.metadata.version({'trak': 'traker'}.get(mod, mod))
                meta[key] = {'method': method, 'library': f'{lib} {ver}', 'seconds': tf + ts, 'fit_s': tf, 'score_s': ts,
                             'model': c.hash, **info}
                log(f"[{key}] {tf + ts:7.1f} s (fit {tf:.1f} + score {ts:.1f}); {info['setting']}")
            except Exception as e:
                meta[key] = {'method': method, 'library': lib, 'skipped': f"failed: {type(e).__name__}: {str(e)[:300]}"}
                log(f"[{key}] FAILED: {type(e).__name__}: {e}")
        meta_path.write_text(json.dumps(meta, indent=1, default=float))   # after every peer: a crash keeps what is done
    log(f"peers part done in {time.time() - t0:.0f} s -> {out / 'scores'}")

def check_peers(out:Path, n_query:int, only=None, batch=1000)->dict:
    """Recompute the peers' scores for the first `n_query` evaluation queries with this code (same model, settings and seeds)
    and compare them with the rows saved in <out>/scores/<key>.npy by an earlier --part peers; writes nothing. A cheap check
    that a change to the code leaves the peers' scores as they were (the training side, the costly part, still runs in full).
    Returns key -> {'exact', 'allclose', 'max_abs', 'max_rel', 'seconds'}."""
    out = Path(out); meta = json.loads((out / 'peers.json').read_text()) if (out / 'peers.json').exists() else {}
    torch.manual_seed(SEED); np.random.seed(SEED)
    c = Ctx(out, batch)
    c.Xq, c.Yq = c.Xq[:n_query], c.Yq[:n_query]; c.Q = len(c.Xq)
    log(f"check: model {c.hash}, the first {c.Q} evaluation queries x {c.N} training examples vs {out / 'scores'}")
    res = {}
    for key in (only or PEERS):
        path = out / 'scores' / f'{key}.npy'
        if not path.exists(): log(f"[{key}] no saved scores at {path}: not checked"); continue
        if meta.get(key, {}).get('model') != c.hash: log(f"[{key}] saved for model {meta.get(key, {}).get('model')}, not {c.hash}")
        why = peer_available(PEERS[key][2])
        if why: log(f"[{key}] SKIPPED: {why}"); continue
        with tempfile.TemporaryDirectory(prefix='peers-lds-check-') as d:
            torch.manual_seed(SEED)
            (S, *_), t = timed(lambda: PEER_FNS[key](c, Path(d)))
        S, ref = np.asarray(S, dtype=np.float64), np.load(path)[:c.Q]
        d = np.abs(S - ref)
        r = res[key] = {'exact': bool(np.array_equal(S, ref)), 'allclose': bool(np.allclose(S, ref)), 'max_abs': float(d.max()),
                        'max_rel': float(d.max() / max(np.abs(ref).max(), 1e-300)), 'seconds': t}
        log(f"[{key}] {t:6.1f} s; equal to the saved rows: {'EXACT' if r['exact'] else 'allclose' if r['allclose'] else 'NO'} "
            f"(max |diff| {r['max_abs']:.3g}, relative to max |score| {r['max_rel']:.3g})")
    return res

# ------------------------------------------------------------------------------------------------------------------------
# pwattr's scores and the table (run with the main venv)
# ------------------------------------------------------------------------------------------------------------------------
def _pw_setting(name, run, c)->str:
    from pwattr.recipes import recipe
    r = recipe(name, run.p.domain); kind, out = r.features, r.output_name(run.p)
    feats = ({'ckpt': f"{out} grads at {run.n_checkpoints} checkpoints (lrs {[float(f'{l:.3g}') for _, l, _ in run.trained['checkpoints']]})",
              'final': f"{out} grads of the final model"}.get(kind, f"{out} grads of the final model, per layer"))
    proj = (f"unprojected ({sum(p.numel() for p in run.model().parameters())} dims)" if kind.startswith('kron') else
            f"Projector({run.proj_dim}, 'sparse', seed {run.seed}) per group -> {run.proj_dim * len(c.groups)} dims")
    return f"recipe {name!r} = {repr(r.make(run)).replace(' [not fitted]', '')}: {feats}, groups {list(c.groups)}, {proj}"

def fresh_run(d, run0):
    "An AuditRun with an empty cache in folder `d` but for run0's trained model (so the timed stages start from the model)"
    run = audit_run(d)
    run.cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(run0.cache / f'model-s{SEED}.pt', run.cache / f'model-s{SEED}.pt')
    return run

def pwattr_scores(out:Path, resume=False, noise_floor=True)->dict:
    """pwattr's evaluation-query scores per method through `AuditRun.contributions` (as the audit computes them), timed on a
    fresh cache that holds only the trained model; saved as <out>/scores/<method>-pwattr.npy"""
    from pwattr.recipes import names
    out = Path(out); (out / 'scores').mkdir(parents=True, exist_ok=True)
    run0 = audit_run(out); trained = run0.trained          # the model the peers used (or trained now, same call)
    h = state_hash(trained['state_dict'])
    # determinism check: a fresh training run gives bit-identical weights
    fresh = run0.p.train(run0.train, seed=SEED, checkpoints=N_CKPT, progress=False)
    same = state_hash(fresh.model.state_dict()) == h
    log(f"{PRESET} seed-{SEED} model {h}; retrained now: {'bit-identical' if same else 'DIFFERENT (not deterministic!)'}")
    meta_path = out / 'pwattr.json'
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    res = {}
    with tempfile.TemporaryDirectory(prefix='pwattr-lds-') as d:
        run = fresh_run(d, run0)
        for name in PW_METHODS:
            if name not in names(): raise KeyError(f"pwattr.recipes has no {name!r}")
            path = out / 'scores' / f'{name}-pwattr.npy'
            if resume and path.exists() and meta.get(name, {}).get('model') == h:
                res[name] = np.load(path); log(f"[{name}-pwattr] kept {path} (--resume)"); continue
            torch.manual_seed(SEED)
            (c_eval, _), t = timed(lambda: run.contributions(name))
            S = c_eval.scores().double().numpy()
            np.save(path, S); res[name] = S
            meta[name] = {'method': name, 'library': 'pwattr', 'seconds': t, 'model': h,
                          'setting': _pw_setting(name, run, c_eval),
                          'groups': list(c_eval.groups)}
            log(f"[{name}-pwattr] {t:7.1f} s; groups {list(c_eval.groups)}")
            meta_path.write_text(json.dumps(meta, indent=1, default=float))
    if noise_floor: _noise_floor(out, run0, h, meta, meta_path, resume)
    return meta, h, same

def _noise_floor(out, run0, h, meta, meta_path, resume):
    """pwattr again on the same model with the other random draw changed: projection seed 1 (TracInCP, Grad-Dot, TRAK) or
    sampled-label seed 1 (EK-FAC factors). Its Spearman vs the seed-0 scores is the agreement pwattr reaches with itself, the
    ceiling for a peer that draws its own projection / labels. The seeds are shifted by wrapping the two names pwattr.audit
    uses (Projector, fit_kron_factors) for the duration; nothing else changes."""
    import pwattr.audit as pa
    P0, F0 = pa.Projector, pa.fit_kron_factors
    pa.Projector = lambda dims, kind='rademacher', seed=0, **k: P0(dims, kind=kind, seed=seed + 1, **k)
    pa.fit_kron_factors = lambda *a, seed=0, **k: F0(*a, seed=seed + 1, **k)
    try:
        with tempfile.TemporaryDirectory(prefix='pwattr-lds-s1-') as d:
            run = fresh_run(d, run0)
            for name in PW_METHODS:
                key, path = f'{name}-seed1', out / 'scores' / f'{name}-pwattr-seed1.npy'
                if resume and path.exists() and meta.get(key, {}).get('model') == h:
                    log(f"[{key}] kept {path} (--resume)"); continue
                torch.manual_seed(SEED)
                (c_eval, _), t = timed(lambda: run.contributions(name))
                np.save(path, c_eval.scores().double().numpy())
                what = 'sampled-label seed 1 for the EK-FAC factors' if name == 'ekfac' else 'projection seed 1'
                meta[key] = {'method': name, 'library': 'pwattr, seed 1', 'seconds': t, 'model': h,
                             'setting': f"as pwattr's row, {what} (noise floor)"}
                log(f"[{key}] {t:7.1f} s")
                meta_path.write_text(json.dumps(meta, indent=1, default=float))
    finally: pa.Projector, pa.fit_kron_factors = P0, F0

def part_lds(out:Path, resume=False, noise_floor=True):
    from pwattr.evaluate import lds
    from pwattr.groundtruth import GroundTruth, GT_DIR
    out = Path(out)
    gt = GroundTruth.load(GT_DIR / f'{PRESET}.npz')
    pw_meta, h, same = pwattr_scores(out, resume, noise_floor)
    peers = json.loads((out / 'peers.json').read_text()) if (out / 'peers.json').exists() else {}
    rows, notes = [], []
    for name in PW_METHODS:
        S_pw = np.load(out / 'scores' / f'{name}-pwattr.npy')
        r = lds(S_pw, gt)
        rows.append(dict(method=LABELS[name], library='pwattr', lds=r.mean, lo=r.ci[0], hi=r.ci[1], spearman_vs_pwattr=None,
                         seconds=pw_meta[name]['seconds']))
        for key, (m, lib, _) in PEERS.items():
            if m != name: continue
            info, path = peers.get(key), out / 'scores' / f'{key}.npy'
            if info is None or 'skipped' in info or not path.exists():
                why = (info or {}).get('skipped', 'not computed: run --part peers with the peers venv')
                rows.append(dict(method=LABELS[name], library=lib, lds=None, lo=None, hi=None, spearman_vs_pwattr=None, seconds=None))
                notes.append(f"{LABELS[name]} / {lib}: {why}"); continue
            if info.get('model') != h: notes.append(f"{key}: scores were computed on model {info.get('model')}, pwattr's is {h}")
            S = np.load(path); r = lds(S, gt)
            rows.append(dict(method=LABELS[name], library=info['library'], lds=r.mean, lo=r.ci[0], hi=r.ci[1],
                             spearman_vs_pwattr=spearman(S, S_pw)[0], seconds=info['seconds']))
        p1 = out / 'scores' / f'{name}-pwattr-seed1.npy'
        if noise_floor and p1.exists() and pw_meta.get(f'{name}-seed1', {}).get('model') == h:
            S = np.load(p1); r = lds(S, gt)
            rows.append(dict(method=LABELS[name], library='pwattr, seed 1', lds=r.mean, lo=r.ci[0], hi=r.ci[1],
                             spearman_vs_pwattr=spearman(S, S_pw)[0], seconds=pw_meta[f'{name}-seed1']['seconds']))
    f = lambda v, w=7, d=3: f"{'-':>{w}s}" if v is None else f"{v:{w}.{d}f}"
    lines = [f"LDS on {PRESET} ({gt.n_subsets} subsets x {gt.n_seeds} seeds, margin output; {gt.n_queries} evaluation queries "
             f"x {gt.masks.shape[1]} training examples), seed-{SEED} model {h} (retrained: {'bit-identical' if same else 'DIFFERENT'}); "
             f"unweighted base methods; 95% bootstrap intervals over queries",
             f"{'method':9s} {'library':18s} {'LDS':>7s} {'95% CI':>17s} {'Spearman vs pwattr':>19s} {'seconds':>8s}"]
    for r in rows:
        ci = f"{'-':>17s}" if r['lo'] is None else f"[{r['lo']:6.3f}, {r['hi']:6.3f}]".rjust(17)
        lines.append(f"{r['method']:9s} {r['library']:18s} {f(r['lds'])} {ci} {f(r['spearman_vs_pwattr'], 19)} {f(r['seconds'], 8, 1)}")
    lines.append("Spearman vs pwattr: mean over queries of the rank correlation of the peer's and pwattr's scores over the training "
                 "examples. seconds: wall time after training (gradients, projection, kernel/factors, scores), one run, "
                 "1 thread, shared machine.")
    if noise_floor:
        lines.append("'pwattr, seed 1': pwattr on the same model with its other random draw changed (projection seed 1; for EK-FAC "
                     "the sampled-label seed of the factors): its Spearman vs pwattr is the noise floor, the best agreement a peer "
                     "that draws its own projection / labels can reach.")
    lines.append("Settings:")
    for name in PW_METHODS:
        lines.append(f"  {LABELS[name]} / pwattr: {pw_meta[name]['setting'].replace(' [not fitted]', '')}")
        for key, (m, lib, _) in PEERS.items():
            if m == name and 'setting' in peers.get(key, {}): lines.append(f"  {LABELS[name]} / {lib}: {peers[key]['setting']}")
    lines += [f"NOTE: {n}" for n in notes]
    text = '\n'.join(lines)
    print('\n' + text, flush=True)
    (out / 'table.txt').write_text(text + '\n')
    (out / 'lds.json').write_text(json.dumps(rows, indent=1, default=float))
    (ROOT / 'benchmarks' / 'results' / 'peers_lds_table.json').write_text(json.dumps(rows, indent=1, default=float) + '\n')   # 16_study's cross-check reads it
    (out / 'meta.json').write_text(json.dumps({'preset': PRESET, 'seed': SEED, 'model': h, 'model_retrained_identical': same,
        'proj_dim_per_group': PROJ_DIM, 'lam_rel': LAM_REL, 'n_checkpoints': N_CKPT, 'n_queries': gt.n_queries,
        'query_ids': list(gt.query_ids), 'n_train': int(gt.masks.shape[1]), 'gt_subsets': gt.n_subsets, 'gt_seeds': gt.n_seeds,
        'pwattr': pw_meta, 'peers': peers, 'torch': torch.__version__, 'threads': torch.get_num_threads()}, indent=1, default=float))
    log(f"wrote {out / 'table.txt'}, {out / 'lds.json'}, {out / 'meta.json'}")
    return rows

def part_timing(out:Path, only=None, batch=1000, repeats=3):
    """Times of pwattr and each peer alternated in ONE process (pwattr, peer / peer, pwattr / ...: `repeats` runs each, medians,
    so a change of load from other jobs hits both alike), through benchmarks/_bench.py: the machine limit, the load before and
    after and the ratios go to benchmarks/results/peers_lds.json. pwattr runs as the audit runs it (`AuditRun.contributions`)
    on a fresh cache holding only the trained model (made before each run, untimed); each peer on a fresh work folder. The
    scores are not saved here: the LDS table (--part lds) reads the ones saved by --part peers / lds."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from _bench import Bench
    B = Bench('peers_lds', {'out': str(out), 'only': only, 'batch': batch, 'repeats': repeats})
    torch.manual_seed(SEED); np.random.seed(SEED)
    out = Path(out); c = Ctx(out, batch); run0 = c.run
    B.note(f"timing part: {PRESET} seed-{SEED} model {c.hash} ({c.P} params), {c.N} training examples x {c.Q} evaluation queries, "
           f"projection {c.D} dims, batch {batch}, {repeats} alternated runs per side, medians")
    state = {}
    def before(side):
        if 'tmp' in state: state.pop('tmp').cleanup()
        state['tmp'] = tempfile.TemporaryDirectory(prefix='peers-lds-timing-')
        state['run'] = fresh_run(state['tmp'].name, run0) if side == 'pwattr' else None
    for key in (only or PEERS):
        method, lib, mod = PEERS[key]
        why = peer_available(mod)
        if why: B.note(f"[{key}] peer missing: {why}"); continue
        def pw():
            torch.manual_seed(SEED); return state['run'].contributions(method)[0]
        def peer():
            torch.manual_seed(SEED); return PEER_FNS[key](c, Path(state['tmp'].name))
        try:
            res = B.alternate({'pwattr': pw, lib: peer}, repeats, key=key, before=before)
        except Exception as e:
            B.note(f"[{key}] FAILED: {type(e).__name__}: {str(e)[:300]}"); continue
        finally:
            if 'tmp' in state: state.pop('tmp').cleanup()
        B.ratio(f"{LABELS[method]}: {lib} / pwattr", res, lib, 'pwattr', clock='wall', same_work=False,
                differs=res[lib]['out'][3]['setting'] + ' | pwattr: ' + _pw_setting(method, run0, res['pwattr']['out']))
    B.save()

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--part', default='both', choices=['both', 'peers', 'lds', 'timing'])
    ap.add_argument('--out', default=str(ROOT / 'runs' / 'peers_lds'), help='output folder (scores/, table.txt, lds.json)')
    ap.add_argument('--peers-python', default=PEER_PY, help="the peers venv's python (--part both runs the peers step with it)")
    ap.add_argument('--only', default=None, type=lambda s: s.split(','), help=f"peers part: comma list of {','.join(PEERS)}")
    ap.add_argument('--batch', type=int, default=1000, help='peers part: training / query batch size for the peers')
    ap.add_argument('--repeats', type=int, default=3, help='timing part: alternated runs per side (medians)')
    ap.add_argument('--no-noise-floor', action='store_true', help="lds part: skip the 'pwattr, seed 1' rows")
    ap.add_argument('--resume', action='store_true', help='keep score matrices already saved for the same model')
    ap.add_argument('--check', type=int, default=None, metavar='K',
                    help="peers venv: recompute the peers' (--only) scores for the first K evaluation queries and compare them "
                         "with the saved <out>/scores/<key>.npy rows; writes nothing")
    a = ap.parse_args()
    if a.only and (bad := [k for k in a.only if k not in PEERS]): ap.error(f"unknown peers {bad}: use {list(PEERS)}")
    t0 = time.time()
    if a.check is not None:
        if a.check < 1: ap.error("--check K needs K >= 1")
        res = check_peers(Path(a.out), a.check, a.only, a.batch)
        log(f"check done in {time.time() - t0:.0f} s: {sum(r['exact'] for r in res.values())} exact, "
            f"{sum(r['allclose'] for r in res.values())} allclose of {len(res)} checked")
        sys.exit(0 if res and all(r['allclose'] for r in res.values()) else 1)
    if a.part == 'timing': part_timing(Path(a.out), a.only, a.batch, a.repeats)
    elif a.part == 'peers': part_peers(Path(a.out), a.only, a.resume, a.batch)
    else:
        if a.part == 'both':
            if not Path(a.peers_python).exists(): ap.error(f"no peers python at {a.peers_python}: see benchmarks/methods.py --help")
            cmd = [a.peers_python, __file__, '--part', 'peers', '--out', a.out, '--batch', str(a.batch)] + \
                  (['--only', ','.join(a.only)] if a.only else []) + (['--resume'] if a.resume else [])
            subprocess.run(cmd, check=True)
        part_lds(Path(a.out), a.resume, not a.no_noise_floor)
    log(f"total wall time {time.time() - t0:.0f} s")
