"""The `optimize` command: a thin layer over the library.

    optimize MODEL -o OUT [--passes P] [--dtype D] [--dump-ir DIR]   (import, passes, save)
    optimize inspect PATH [--ir]                                     (model or artifact)
    optimize run ARTIFACT --prompt TEXT [--max-new-tokens N]
    optimize passes                                                   (list passes)

Exit codes: 0 success, 2 invalid input, 1 internal or I/O error. ``--debug`` (anywhere)
shows tracebacks.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import click

from optimizer.errors import InvalidInput

DEFAULT_PASSES = ("dce",)


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


def _pipeline(passes: tuple[str, ...], dtype: str | None) -> list[str]:
    specs = [s.strip() for group in passes for s in group.split(";") if s.strip()]
    specs = specs or list(DEFAULT_PASSES)
    if dtype:
        specs.append(f"cast-weights:dtype={dtype}")
    return specs


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to write.")
@click.option("--config", type=click.Path(path_type=Path), help="config.json for a bare "
              ".safetensors file.")
@click.option("--passes", multiple=True, help="Pass pipeline, e.g. 'dce;cast-weights:dtype="
              f"bfloat16' (default: {';'.join(DEFAULT_PASSES)}).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Store weights in this dtype (appends a cast-weights pass).")
@click.option("--dump-ir", type=click.Path(path_type=Path), help="Write the IR after each "
              "pass into this directory.")
def build(model: str, output: Path, config: Path | None, passes: tuple[str, ...],
          dtype: str | None, dump_ir: Path | None) -> None:
    """Import MODEL, run the passes, write the artifact to OUTPUT."""
    from optimizer import PassManager, import_model, save

    start = time.perf_counter()
    manager = PassManager(_pipeline(passes, dtype), dump_ir=dump_ir, log=_log)
    graph = import_model(model, config=config)
    _log(f"imported {graph.meta['model']['family']}: {len(graph.nodes)} nodes, "
         f"{graph.n_params:,} params")
    graph = manager.run(graph)
    save(graph, output, progress=_log)
    size = sum(f.stat().st_size for f in output.iterdir())
    _log(f"wrote {output} ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")


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
    _log(f"{n} tokens in {seconds:.2f} s ({n / seconds:.1f} tok/s, prefill included)")


@cli.command("passes")
def list_passes() -> None:
    """List the available passes and their options."""
    import dataclasses

    from optimizer.passes import registry

    for name, p in sorted(registry().items()):
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(p.options))
        click.echo(f"{name:16} {p.doc}" + (f"  [{opts}]" if opts else ""))


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
