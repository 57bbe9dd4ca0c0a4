"""Peak memory and time of EK-FAC contributions: in-memory training gradients vs streamed (pwattr.kronecker.stream_contributions).

Trains the fmnist-mlp preset once (seed 0), fits EK-FAC factors on the training subset, then runs each mode in a fresh
subprocess and reports the peak RSS above the process's RSS just before scoring (VmHWM reset there) and the
wall time of scoring. Usage: OMP_NUM_THREADS=1 python benchmarks/kronecker.py [--n 1000] [--q 100] [--preset fmnist-mlp] [--modes memory,streamed]
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

def _maxrss_mb():
    "Peak resident set size in MB: VmHWM (resettable), else ru_maxrss"
    try: return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024
    except OSError: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB

def _reset_peak():
    "Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measured next is this step's"
    try: open('/proc/self/clear_refs', 'w').write('5')
    except OSError: pass

def child(mode, work, n, q, batch_size):
    torch.set_num_threads(1)
    from pwattr.presets import get_preset
    from pwattr.features import output_fn
    from pwattr.kronecker import KronFactors, EKFAC, kron_features
    cfg = json.load(open(os.path.join(work, 'cfg.json')))
    p = get_preset(cfg['preset']); train, test = p.load()
    model = p.make_model(0); model.load_state_dict(torch.load(os.path.join(work, 'model.pt'))); model.eval()
    fac = KronFactors.load(os.path.join(work, 'factors.pt'))
    fn, tr = output_fn(p.output), train[list(range(n))]
    query = kron_features(model, fn, test[list(range(q))])          # both modes need the query gradients
    _reset_peak(); base, t0 = _maxrss_mb(), time.perf_counter()
    if mode == 'memory':
        feats = kron_features(model, fn, tr, batch_size=batch_size)
        C = EKFAC(fac).fit(feats).contributions(query)
    else: C = EKFAC(fac).contributions_streamed(model, tr, fn, query, batch_size=batch_size)
    dt = time.perf_counter() - t0
    torch.save(C.S, os.path.join(work, f'S-{mode}.pt'))
    print(json.dumps(dict(mode=mode, seconds=dt, peak_above_base_mb=_maxrss_mb() - base, base_mb=base, shape=list(C.S.shape),
                          train_ids_ok=list(C.train_ids) == list(tr.ids))))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--preset', default='fmnist-mlp'); ap.add_argument('--n', type=int, default=1000)
    ap.add_argument('--q', type=int, default=100); ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--modes', default='memory,streamed'); ap.add_argument('--child', default=None); ap.add_argument('--work', default=None)
    a = ap.parse_args()
    if a.child: return child(a.child, a.work, a.n, a.q, a.batch_size)
    torch.set_num_threads(1)
    from pwattr.presets import get_preset
    from pwattr.features import output_fn
    from pwattr.kronecker import fit_kron_factors, fisher_output_for
    work = tempfile.mkdtemp(prefix='kron-bench-')
    p = get_preset(a.preset); train, _ = p.load()
    t0 = time.perf_counter(); model = p.train(train, seed=0, progress=False).model.eval()
    print(f"trained {p.name} in {time.perf_counter() - t0:.1f} s")
    torch.save(model.state_dict(), os.path.join(work, 'model.pt'))
    t0 = time.perf_counter()
    fit_kron_factors(model, train[list(range(a.n))], fisher_output_for(output_fn(p.output)), seed=0).save(os.path.join(work, 'factors.pt'))
    print(f"EK-FAC factors on {a.n} examples in {time.perf_counter() - t0:.1f} s (shared by both modes, not timed below)")
    json.dump({'preset': a.preset}, open(os.path.join(work, 'cfg.json'), 'w'))
    res = {}
    for mode in a.modes.split(','):
        out = subprocess.run([sys.executable, __file__, '--child', mode, '--work', work, '--n', str(a.n), '--q', str(a.q),
                              '--batch-size', str(a.batch_size)], capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1]); print(res[mode])
    if set(res) != {'memory', 'streamed'}: return
    Sm, Ss = torch.load(os.path.join(work, 'S-memory.pt')), torch.load(os.path.join(work, 'S-streamed.pt'))
    print(f"max |S_streamed - S_memory| = {(Ss - Sm).abs().max().item():.3g} (max |S| = {Sm.abs().max().item():.3g}); "
          f"equal: {torch.equal(Ss, Sm)}")

if __name__ == '__main__': main()
