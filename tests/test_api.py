"""The notebook API: what `import mlns_fast` offers, and the README's snippet, run at toy size."""
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np

import mlns_fast

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_is_quiet_and_light():
    code = ("import sys, warnings; warnings.simplefilter('error'); import mlns_fast as mf; "
            "assert 'torch' not in sys.modules; f = mf.train; assert callable(f) and 'torch' in sys.modules; "
            "print(sorted(mf.__all__))")
    p = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
    for name in ("train", "lr_find", "evaluate", "predict", "load_run", "compare"):
        assert name in p.stdout and callable(getattr(mlns_fast, name)) and getattr(mlns_fast, name).__doc__


def test_the_readme_snippet_runs(tiny_data, tmp_path, monkeypatch):
    from mlns_fast import api
    from mlns_fast.data.demo import demo_split
    from .conftest import tiny_flags
    snippet = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the default runs folder, experiments/runs, lands in tmp_path
    np.save(tmp_path / "images.npy", demo_split("test").images[:4])
    tiny = {k: v for k, v in tiny_flags(tiny_data).items() if k != "epochs"}
    monkeypatch.setattr(api, "train", partial(api.train, **tiny))  # toy-sized, same code path
    warmups, real_lr_find = [], api.lr_find

    def lr_find(*a, warmup=0, **k):  # the snippet's 200 warm-up batches (21 s on 2 cores) cut to 4:
        warmups.append(warmup)       # the warm-up itself is tested in test_cli, at size
        return real_lr_find(*a, warmup=min(warmup, 4), **k, **tiny, num_it=20)
    monkeypatch.setattr(api, "lr_find", lr_find)
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert warmups == [200]
    assert scope["summary"]["status"] == "finished" and scope["summary"]["epochs"] == 1
    assert scope["run"].name == scope["summary"]["run"] and (tmp_path / "lr.png").is_file()
    assert {"valley", "edge", "warnings"} <= set(scope["suggestions"])
