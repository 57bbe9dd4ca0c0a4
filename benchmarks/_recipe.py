"""What the recipe benchmarks share (benchmarks/lm_recipe.py, benchmarks/resnet9_recipe.py): the agreement statistics
of a candidate's ground truth, and the command line that measures candidates into one CSV (a row per candidate,
subsets and seeds; reruns replace their row)."""
import argparse, csv, json
import numpy as np, torch
from pwattr.evaluate import seed_agreement

def gt_stats(gt, output:str)->dict:
    "Seed agreement with its interval, the output's mean (named `output`) and its spread across subsets and between seeds"
    sa = seed_agreement(gt); o = gt.outputs.astype(np.float64)
    return {'subsets': gt.n_subsets, 'seeds': gt.n_seeds, 'seed_agreement': round(sa.mean, 4), 'sa_lo': round(sa.ci[0], 4),
            'sa_hi': round(sa.ci[1], 4), output: round(float(o.mean()), 4),
            'sd_across_subsets': round(float(o.std(0, ddof=1).mean()), 5),     # one seed's spread over the subsets, mean over queries
            'sd_between_seeds': round(float(o.std(1, ddof=1).mean()), 5),      # within a subset, mean over subsets and queries
            'model_s': round(float(gt.times.mean()), 2), 'cpu_capability': torch.backends.cpu.get_cpu_capability()}

def recipe_main(doc:str, # the script's docstring (its first line is the description)
                candidates:dict, # name -> the candidate's settings
                describe, # (name, settings) -> one line for --list
                measure, # (name, subsets, seeds) -> a row (dict)
                out, # the CSV path
               ):
    "Parse the command line; list the candidates, or measure each named one into `out`"
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument('candidates', nargs='*'); ap.add_argument('--subsets', type=int, default=16)
    ap.add_argument('--seeds', type=int, default=2); ap.add_argument('--list', action='store_true')
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.list:
        for k, v in candidates.items(): print(describe(k, v))
        return
    for name in a.candidates:
        r = measure(name, a.subsets, a.seeds); print(json.dumps(r), flush=True)
        old = list(csv.DictReader(out.open())) if out.exists() else []
        rows = [o for o in old if (o['candidate'], o['subsets'], o['seeds']) != (name, str(r['subsets']), str(r['seeds']))] + [r]
        with out.open('w', newline='') as fh:
            w = csv.DictWriter(fh, list(dict.fromkeys(k for x in rows for k in x))); w.writeheader(); w.writerows(rows)
