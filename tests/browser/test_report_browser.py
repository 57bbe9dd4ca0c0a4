"""A self-contained HTML report with plots embedded as base64 PNGs, opened in Debian's Chromium: every image
must decode and render (naturalWidth > 0). A broken image on the same kind of page shows the check can fail."""
import os
from pathlib import Path
import numpy as np, torch
import pytest

ROOT = Path(__file__).resolve().parents[2]

def tiny_report(path:Path)->int:
    "Write a small report with the plotting functions; returns the number of embedded plots"
    from pwattr.plots import (img_tag, plot_group_lds, plot_block_function, plot_weights, plot_weight_sets,
                              plot_weight_cosine, plot_lds_table, plot_topk_gallery)
    groups = [f'h.{b}.{f}' for b in range(2) for f in ('attn', 'mlp')]
    lds = {g: 0.1 + 0.2 * ('mlp' in g) + 0.1 * int(g[2]) for g in groups}
    w = {'TRAK': [0.5, 1.6, 0.4, 1.5], 'TracIn': [0.7, 1.3, 0.6, 1.4]}
    S = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(0))
    imgs = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    figs = {'per-group LDS': plot_group_lds(lds),
            'block x function': plot_block_function(lds, block=lambda g: g[:3], function=lambda g: g[4:]),
            'weights': plot_weights(w['TRAK'], groups), 'weight sets': plot_weight_sets(w, groups),
            'cosine': plot_weight_cosine(w, groups),
            'LDS table': plot_lds_table({'TRAK': {'uniform': (0.2, 0.15, 0.25), 'learned': (0.3, 0.25, 0.35)}}),
            'gallery': plot_topk_gallery(S, 0, imgs, imgs[0], {'without weights': None, 'with weights': w['TRAK']}, k=4)}
    body = ''.join(f'<h2>{t}</h2>{img_tag(f, alt=t, class_="plot")}' for t, f in figs.items())
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>pwattr report</title></head>'
                    f'<body><h1>pwattr audit (test report)</h1>{body}</body></html>')
    return len(figs)

IMAGES = """() => [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"""

def check_images(page, url:str, artifacts:Path, shot:str)->list:
    page.goto(url); page.wait_for_load_state('load')
    page.screenshot(path=str(artifacts / shot), full_page=True)
    return page.evaluate(IMAGES)

def test_report_plots_render(page, artifacts, tmp_path):
    n = tiny_report(tmp_path / 'report.html')
    imgs = check_images(page, (tmp_path / 'report.html').as_uri(), artifacts, 'report.png')
    assert len(imgs) == n, f"expected {n} images, the page has {len(imgs)}"
    bad = [i for i in imgs if not (i['complete'] and i['w'] > 0 and i['h'] > 0)]
    assert not bad, f"plots that did not render: {bad}"
    assert all(i['w'] >= 200 for i in imgs), imgs                       # real figures, not icons

def test_broken_image_is_detected(page, artifacts, tmp_path):
    "The control: the same check on a page with a corrupt PNG finds it"
    (tmp_path / 'broken.html').write_text('<html><body><img alt="broken" src="data:image/png;base64,iVBORw0KGgoAAAA"></body></html>')
    imgs = check_images(page, (tmp_path / 'broken.html').as_uri(), artifacts, 'report_broken_control.png')
    assert [i['w'] for i in imgs] == [0]

def test_audit_report_renders(page, artifacts, tmp_path):
    "The report `pwattr audit` writes (PWATTR_REPORT, or a fresh TRAK audit of fmnist-mlp, about 40 s): every plot renders"
    path = os.environ.get('PWATTR_REPORT')
    if path is None:
        from pwattr.audit import audit
        path = audit('fmnist-mlp', 'trak', out=tmp_path / 'audit', progress=False, log=None).out / 'report.html'
    path = Path(path)
    imgs = check_images(page, path.resolve().as_uri(), artifacts, 'audit_report.png')
    assert len(imgs) >= 4, f"{path} has {len(imgs)} images; expected the LDS table, per-group LDS, weights and galleries"
    bad = [i for i in imgs if not (i['complete'] and i['w'] > 0)]
    assert not bad, f"images in {path} that did not render: {bad}"
    # a reader's page: what was run, a table of contents whose links land, a caption under every figure, no JSON dump
    heads = page.evaluate("() => [...document.querySelectorAll('table.meta th')].map(t => t.textContent)")
    assert {'pwattr version', 'date (UTC)', 'preset', 'model', 'data', 'reproduce'} <= set(heads), heads
    links = page.evaluate("() => [...document.querySelectorAll('nav a')].map(a => !!document.querySelector(a.getAttribute('href')))")
    assert links and all(links), "a contents link points nowhere"
    assert page.locator('figure figcaption').count() == len(imgs), "a figure without a caption"
    assert page.locator('pre').count() == 0, "the settings are dumped as JSON instead of a table"
    assert page.evaluate("() => [...document.querySelectorAll('thead')].every(h => h.rows.length === 1)"), "a double table header"
    import json
    probs = json.loads((path.parent / 'results.json').read_text()).get('figure_problems')
    assert probs == {}, f"figures of the report with overlapping or cut text: {probs}"
