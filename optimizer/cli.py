"""The `optimize` command: a thin layer over the library.

    optimize MODEL -o OUT [--passes P] [--dtype D] [--dump-ir DIR]   (import, passes, save)
    optimize inspect PATH [--ir]                                     (model or artifact)
    optimize run ARTIFACT --prompt TEXT [--max-new-tokens N]
    optimize passes                                                   (list passes)
    optimize eval MODEL... --text FILE [--context N] [--stride N]      (perplexity)

Exit codes: 0 success, 2 invalid input, 1 internal or I/O error. ``--debug`` (anywhere)
shows tracebacks.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import click

from optimizer.errors import InvalidInput



def _log(message: str) -> None:
    click.echo(message, err=True)


class _DefaultToBuild(click.Group):
    """`optimize MODEL ...` means `optimize build MODEL ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToBuild)
@click.version_option(package_name="optimizer")
def cli() -> None:
    """Import a model, optimize it, write an artifact, run it.

    MODEL is a Hugging Face directory, a .safetensors file (config.json beside it or
    --config), a .gguf file, or `smollm2` (the built-in SmolLM2-135M-Instruct).
    """


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to write.")
@click.option("--config", type=click.Path(path_type=Path), help="config.json for a bare "
              ".safetensors file.")
@click.option("--passes", multiple=True, help="Pass pipeline, e.g. 'dce;awq:bits=4,"
              "group_size=128' (default: dce).")
@click.option("--int4", is_flag=True, help="GPTQ 4-bit, group 128, act-order.")
@click.option("--int8", is_flag=True, help="Weight-only int8 per output channel (RTN).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration text (.txt, or "
              ".jsonl with a 'text' field); default: samples the model generates itself.")
@click.option("--calib-samples", type=click.IntRange(1), help="Calibration sequences "
              "(default 128).")
@click.option("--calib-seq-len", type=click.IntRange(2), help="Tokens per calibration "
              "sequence (default 512).")
@click.option("--quantize-lm-head", is_flag=True, help="Quantize the lm_head too.")
@click.option("--format", "fmt", type=click.Choice(["artifact", "gptq", "awq"]),
              default="artifact", show_default=True, help="Write our artifact, or a "
              "GPTQ / AWQ checkpoint directory other tools load.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Store the remaining float weights in this dtype.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Where GPTQ's "
              "quantization math runs (default cpu).")
@click.option("--target", type=click.Choice(["reference", "cuda"]), default="reference",
              show_default=True, help="cuda: fuse for the GPU kernels, store weights in their "
              "layout (bf16 unless --dtype); run with `optimize run --device cuda`.")
@click.option("--dump-ir", type=click.Path(path_type=Path), help="Write the IR after each "
              "pass into this directory.")
def build(model: str, output: Path, config: Path | None, passes: tuple[str, ...], int4: bool,
          int8: bool, calib: Path | None, calib_samples: int | None,
          calib_seq_len: int | None, quantize_lm_head: bool, fmt: str, dtype: str | None,
          device: str | None, target: str, dump_ir: Path | None) -> None:
    """Import MODEL, run the passes, write the artifact to OUTPUT."""
    from optimizer import PassManager, import_model, save
    from optimizer.pipelines import BuildRequest, build_pipeline

    start = time.perf_counter()
    if target == "cuda" and fmt != "artifact":
        raise InvalidInput(None, f"--target cuda writes our artifact (kernel layouts), not "
                                 f"--format {fmt}; build the {fmt} checkpoint without --target")
    specs = build_pipeline(BuildRequest(
        passes, int4, int8, dtype, str(calib) if calib else None, calib_samples,
        calib_seq_len, quantize_lm_head, device, target))
    manager = PassManager(specs, dump_ir=dump_ir, log=_log)
    graph = import_model(model, config=config)
    _log(f"imported {graph.meta['model']['family']}: {len(graph.nodes)} nodes, "
         f"{graph.n_params:,} params")
    graph = manager.run(graph)
    _summarize_quantization(graph)
    if fmt == "artifact":
        save(graph, output, progress=_log)
    else:
        from optimizer.exporters import export_hf_quantized
        export_hf_quantized(graph, output, fmt)
    size = sum(f.stat().st_size for f in output.iterdir())
    _log(f"wrote {output} ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")


def _summarize_quantization(graph) -> None:
    """Per-layer quantization error summary (relative output error on calibration data)."""
    for report in graph.meta.get("quantization", []):
        linears = report.get("linears", {})
        if not linears:
            continue
        by_layer: dict[str, list[float]] = {}
        for name, rec in linears.items():
            layer = name.split(".")[2] if name.startswith("model.layers.") else "head"
            by_layer.setdefault(layer, []).append(rec["rel_error"])
        worst = max(linears.items(), key=lambda kv: kv[1]["rel_error"])
        _log(f"{report['pass']}: relative output error per layer (mean / max):")
        for layer, errs in by_layer.items():
            _log(f"  layer {layer:>4}: {sum(errs) / len(errs):.4f} / {max(errs):.4f}")
        _log(f"  worst linear: {worst[0]} ({worst[1]['rel_error']:.4f})")
        raised = [n for n, r in linears.items() if "damp_raised_to" in r or "fallback" in r]
        if raised:
            _log(f"  dampening raised or fallback used for {len(raised)} linears "
                 "(see manifest.json)")


@cli.command()
@click.argument("path")
@click.option("--config", type=click.Path(path_type=Path))
@click.option("--ir", "show_ir", is_flag=True, help="Print the IR's text form.")
def inspect(path: str, config: Path | None, show_ir: bool) -> None:
    """Describe a model or an artifact: architecture, layers, params, dtypes, size."""
    from optimizer import import_model
    from optimizer.artifact import load_artifact
    from optimizer.ir import format_graph

    p = Path(path)
    manifest = None
    if (p / "manifest.json").is_file():
        graph, manifest = load_artifact(p)
        files = [p / f for f in manifest["files"]]
    else:
        graph = import_model(path, config=config)
        files = [Path(f) for f in graph.meta.get("sources", [])]
    if show_ir:
        click.echo(format_graph(graph), nl=False)
        return
    m = graph.meta["model"]
    dtypes = Counter(w.dtype for w in graph.weights.values())
    rows = [
        ("kind", "artifact" if manifest else "model"),
        ("architecture", m["family"]),
        ("layers", m["n_layers"]),
        ("hidden size", m["hidden_size"]),
        ("heads (kv)", f"{m['n_heads']} ({m['n_kv_heads']}), head dim {m['head_dim']}"),
        ("mlp size", m["intermediate_size"]),
        ("vocab", m["vocab_size"]),
        ("tied embeddings", m["tie_word_embeddings"]),
        ("rope", f"theta {m['rope_theta']:g}"
                 + (f", {m['rope_scaling']['rope_type']}" if m["rope_scaling"] else "")),
        ("params", f"{graph.n_params:,}"),
        ("weight dtypes", ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items()))),
        ("weights in memory", f"{graph.weight_bytes / 2**20:.1f} MiB"),
        ("size on disk", f"{sum(f.stat().st_size for f in files) / 2**20:.1f} MiB"),
        ("tokenizer", "yes" if graph.meta.get("tokenizer") else "no"),
        ("nodes", len(graph.nodes)),
    ]
    if manifest:
        rows.append(("pipeline", ", ".join(s["name"] for s in manifest["pipeline"]) or "-"))
    for key, value in rows:
        click.echo(f"{key:18} {value}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def run(artifact: Path, prompt: str, max_new_tokens: int, temperature: float, top_p: float,
        seed: int, device: str) -> None:
    """Generate text from ARTIFACT, streaming tokens as they come."""
    from optimizer import runtime

    rt = runtime.load(artifact, device=device)
    click.echo(prompt, nl=False)
    start = time.perf_counter()
    text = rt.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, stream=lambda s: click.echo(s, nl=False))
    seconds = time.perf_counter() - start
    click.echo()
    n = len(rt.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0
    stats = getattr(rt, "last_stats", None)
    if stats:   # the CUDA runtime times prefill and decode apart
        _log(f"{n} tokens in {seconds:.2f} s: prefill {stats['prefill_s'] * 1000:.1f} ms, "
             f"decode {stats['decode_tok_s']:.1f} tok/s")
    else:
        _log(f"{n} tokens in {seconds:.2f} s ({n / seconds:.1f} tok/s, prefill included)")


@cli.command("passes")
def list_passes() -> None:
    """List the available passes and their options."""
    import dataclasses

    from optimizer.passes import registry

    for name, p in sorted(registry().items()):
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(p.options))
        click.echo(f"{name:16} {p.doc}" + (f"  [{opts}]" if opts else ""))


@cli.command("eval")
@click.argument("models", nargs=-1, required=True)
@click.option("--text", "text_path", required=True, type=click.Path(path_type=Path),
              help="UTF-8 text file to score.")
@click.option("--context", default=512, show_default=True, type=click.IntRange(2),
              help="Tokens per window.")
@click.option("--stride", default=256, show_default=True, type=click.IntRange(1),
              help="Tokens between window starts (<= --context).")
@click.option("--max-tokens", type=click.IntRange(2), help="Score only the first N tokens.")
@click.option("--device", default="cpu", show_default=True)
def evaluate(models: tuple[str, ...], text_path: Path, context: int, stride: int,
             max_tokens: int | None, device: str) -> None:
    """Perplexity of each of MODELS (artifacts or model sources) on the text of --text,
    by sliding windows; prints one row per model, compared with the first."""
    from optimizer.evaluate import perplexity, read_text, tokenize_text
    from optimizer.open_model import open_runtime

    if stride > context:
        raise click.BadParameter(f"{stride} is more than --context ({context})",
                                 param_hint="'--stride'")
    text = read_text(text_path)
    rows: list[tuple[str, float, int, float]] = []
    for name in models:
        with open_runtime(name, device=device) as rt:
            ids = tokenize_text(rt, text)[:max_tokens]
            if len(ids) < 2:
                raise InvalidInput(text_path, f"encodes to {len(ids)} token(s) with {name}; "
                                   "perplexity needs at least 2")
            start = time.perf_counter()
            result = perplexity(rt, ids, context, stride, progress=_eval_progress(name))
            rows.append((name, result.ppl, result.n_tokens, time.perf_counter() - start))
    _print_eval_table(rows)


def _eval_progress(name: str) -> Callable[[int, int], None]:
    """One updating line on a terminal; otherwise at most 10 log lines."""
    tty = sys.stderr.isatty()

    def report(i: int, n: int) -> None:
        if tty:
            click.echo(f"\r{name}: window {i}/{n}", err=True, nl=i == n)
        elif i % -(-n // 10) == 0 or i == n:
            _log(f"{name}: window {i}/{n}")
    return report


def _print_eval_table(rows: list[tuple[str, float, int, float]]) -> None:
    """name, perplexity, tokens scored, seconds, and the relative change of perplexity
    vs the first row: (ppl / ppl_first - 1) * 100 %."""
    width = max(len("model"), *(len(r[0]) for r in rows))
    click.echo(f"{'model':<{width}}  {'perplexity':>12}  {'tokens':>8}  {'seconds':>8}  "
               f"{'vs first':>8}")
    first = rows[0][1]
    for name, ppl, n_tokens, seconds in rows:
        change = f"{(ppl / first - 1) * 100:+.1f}%"
        click.echo(f"{name:<{width}}  {ppl:>12.4f}  {n_tokens:>8}  {seconds:>8.1f}  "
                   f"{change:>8}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        cli.main(args=argv, prog_name="optimize", standalone_mode=False)
        return 0
    except InvalidInput as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return 2 if isinstance(e, click.UsageError) else 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 1
    except Exception as e:  # internal or I/O error
        if debug:
            traceback.print_exc()
        kind = "I/O error" if isinstance(e, OSError) else "internal error"
        click.echo(f"{kind}: {type(e).__name__}: {e}" + ("" if debug else
                   " (run with --debug for the traceback)"), err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
