"""torch is optional: imgconv works without it, and imgconv.torch says how to get it."""
import subprocess
import sys
import textwrap


def run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_imgconv_works_without_torch(tmp_path):
    done = run(f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed: importing it fails
        import numpy as np
        import imgconv, imgconv.augment, imgconv.epochs, imgconv.prefetch
        with imgconv.create({str(tmp_path / 's.lmdb')!r}) as writer:
            writer.append(np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 2])
        print(len(imgconv.open({str(tmp_path / 's.lmdb')!r})), imgconv.augment.CropFlipNormalize()(
            np.zeros((1, 2, 2, 3), np.uint8)).shape)
        try:
            import imgconv.torch
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "3 (1, 3, 2, 2)"
    assert lines[1].startswith("ImportError:") and 'pip install "imgconv[torch]"' in lines[1]


def test_only_imgconv_torch_imports_torch():
    done = run("""
        import sys
        import imgconv, imgconv.augment, imgconv.epochs, imgconv.prefetch, imgconv.bench.harness
        print("torch" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
