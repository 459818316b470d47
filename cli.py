"""The ``scot`` command line (Typer).

Commands: ``match`` (one pair or a list of pairs), ``eval`` (benchmark PCK), ``bench``
(speed and memory), ``search-layers`` (beam search over hyperpixel ids), ``layers``
(hyperpixel ids of a backbone).  Every command uses only the public :mod:`scot` API.  Problems with the
input are reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import csv
import functools
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Training-free semantic correspondence (SCOT: optimal transport + regularized Hough matching).",
)


def _err(message: str) -> None:
    typer.echo(message, err=True)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr (exit 2), interrupts into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from scot.errors import ScotError

        try:
            return fn(*args, **kwargs)
        except ScotError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2)
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort):
            raise
        except MemoryError:
            _err("error: out of memory; try a smaller --image-side, fewer --hyperpixel ids or --cost-dtype bfloat16")
            raise typer.Exit(1)
        except Exception as exc:  # pragma: no cover - last resort, keeps the promise of one line
            if os.environ.get("SCOT_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _err(f"error: unexpected {type(exc).__name__}: {first} (set SCOT_DEBUG=1 for the traceback)")
            raise typer.Exit(1)

    return wrapper


# ---------------------------------------------------------------------------------------
# Options shared by every command that runs the pipeline.
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="resnet101, resnet50, efficientnet-lite0, efficientnet-lite2 or auto (ResNet-101 if its weights are available, else EfficientNet-Lite2).")]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", help="State-dict file for the backbone (torchvision / lukemelas keys), or 'random[:SEED]'.")]
PresetOpt = Annotated[str, typer.Option("--preset", help="Named settings: pfpascal, pfwillow or spair (hyperpixel ids per backbone, exp2).")]
PresetFileOpt = Annotated[Optional[Path], typer.Option("--preset-file", help="JSON written by 'scot search-layers'; sets the hyperpixel ids.")]
HyperpixelOpt = Annotated[Optional[str], typer.Option("--hyperpixel", help="Hyperpixel ids, e.g. '(2,22,24,25,27,28,29)'. Overrides the preset.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda.  [default: cpu]")]
EpsOpt = Annotated[Optional[float], typer.Option("--eps", help="Entropic regularisation of Sinkhorn.  [default: 0.05]")]
Exp2Opt = Annotated[Optional[float], typer.Option("--exp2", help="Exponent of the rescaled plan (n·P)^exp2.  [default: the preset's]")]
ItersOpt = Annotated[Optional[int], typer.Option("--sinkhorn-iters", help="Sinkhorn iterations (the paper's code runs 1).  [default: 1]")]
TolOpt = Annotated[Optional[float], typer.Option("--sinkhorn-tol", help="Stop Sinkhorn early once the L1 marginal error is below this.")]
ModeOpt = Annotated[Optional[str], typer.Option("--sinkhorn-mode", help="plain or log (log-domain, stable at small eps).  [default: plain]")]
TauOpt = Annotated[Optional[float], typer.Option("--tau", help="Unbalanced OT: KL weight of the relaxed marginals.")]
CamOpt = Annotated[Optional[bool], typer.Option("--cam/--no-cam", help="Weight the OT marginals with class activation maps.  [default: on]")]
RhmOpt = Annotated[Optional[bool], typer.Option("--rhm/--no-rhm", help="Regularized Hough matching.  [default: on]")]
OtOpt = Annotated[Optional[bool], typer.Option("--ot/--no-ot", help="Optimal transport (off: nearest neighbour on cosine).  [default: on]")]
CostDtypeOpt = Annotated[Optional[str], typer.Option("--cost-dtype", help="float32, bfloat16, or tf32 (CUDA) for the cosine matmul.  [default: float32]")]
SideOpt = Annotated[Optional[int], typer.Option("--image-side", help="Longest image side after resizing.  [default: 300]")]
SubpixelOpt = Annotated[Optional[int], typer.Option("--subpixel", help="Sub-pixel transfer: soft-argmax over an NxN target window (0: off).")]
MutualOpt = Annotated[Optional[bool], typer.Option("--mutual/--no-mutual", help="Move keypoints only with mutually-best matches.")]
FeatureScalesOpt = Annotated[Optional[str], typer.Option("--feature-scales", help="Average hyperpixel features over these input scales, e.g. '1,1.5'.  [default: the preset's; 1,1.5,2 for EfficientNet-Lite on pfwillow/pfpascal, else 1]")]
CamScalesOpt = Annotated[Optional[str], typer.Option("--cam-scales", help="Input scales of the CAM.  [default: 1,1.5,2]")]
CenterOpt = Annotated[Optional[bool], typer.Option("--center-features/--no-center-features", help="Subtract each image's mean hyperpixel before the cosine.  [default: the preset's; on for EfficientNet-Lite on pfwillow/pfpascal, else off]")]
SymmetricOpt = Annotated[Optional[bool], typer.Option("--symmetric/--one-way", help="Also match target to source and add the two RHM confidences.  [default: the preset's; on for EfficientNet-Lite on pfwillow/pfpascal, else off]")]
TransferOpt = Annotated[Optional[str], typer.Option("--transfer", help="How a keypoint combines the displacements of its boxes: mean, weighted (by confidence) or median.  [default: the preset's; weighted for EfficientNet-Lite on pfwillow/pfpascal, else mean]")]
CamWeightingOpt = Annotated[Optional[str], typer.Option("--cam-weighting", help="levels (the paper's steps) or linear (0.5 + 0.5 CAM).")]
LowMemOpt = Annotated[bool, typer.Option("--low-memory", help="Stream the cost in blocks: no N x M matrix in memory (about 3x the matmul work).")]
# dataset selection, shared by `eval` and `search-layers`
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="spair, pfpascal or pfwillow.")]
DatapathOpt = Annotated[Path, typer.Option("--datapath", help="Folder holding PF-WILLOW/, PF-PASCAL/ and SPair-71k/.")]
PairListOpt = Annotated[Optional[Path], typer.Option("--pair-list", help="Use this pair file instead of the split's (e.g. an NCNet-style PF-PASCAL csv).")]
ThresOpt = Annotated[Optional[str], typer.Option("--thres", help="PCK threshold: img or bbox (default: the dataset's, as in the paper).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Only the first N pairs (after --category).")]
CategoryOpt = Annotated[Optional[str], typer.Option("--category", help="Only pairs of this class.")]
SampleOpt = Annotated[Optional[int], typer.Option("--sample", help="Only N pairs spread evenly over the list (every class represented).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for PyTorch (default: PyTorch's choice, one per core).")]


def set_threads(threads: Optional[int]) -> None:
    from scot.errors import ScotError

    if threads is None:
        return
    if threads < 1:
        raise ScotError(f"--threads: must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


# CLI option name -> SCOTConfig field, for the options every pipeline command shares.
ALGORITHM_OPTIONS = {
    "device": "device", "eps": "eps", "exp2": "exp2", "sinkhorn_iters": "sinkhorn_iters", "sinkhorn_tol": "sinkhorn_tol",
    "sinkhorn_mode": "sinkhorn_mode", "tau": "unbalanced_tau", "cam": "cam", "rhm": "rhm", "ot": "ot",
    "cost_dtype": "cost_dtype", "image_side": "image_side", "subpixel": "subpixel", "mutual": "mutual",
    "cam_weighting": "cam_weighting", "center_features": "center_features", "symmetric": "symmetric",
    "transfer": "transfer",
}


def _scales(value: Optional[str], option: str) -> Optional[tuple[float, ...]]:
    from scot.errors import ScotError

    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise ScotError(f"{option}: '{value}' is not a list of numbers, e.g. '1,1.5,2'") from None


def build_config(options: dict[str, Any], *, preset: str):
    """SCOTConfig from a command's options: config defaults < preset < preset file < explicit options.

    ``options`` is the command's ``locals()``; algorithm options left unset (None) keep the
    configuration's defaults, so the defaults live in one place (``SCOTConfig``).
    """
    from scot import SCOTConfig, load_preset_file, parse_hyperpixel_ids

    backbone = options.get("backbone", "auto")
    fields: dict[str, Any] = {}
    preset_file = options.get("preset_file")
    if preset_file is not None:
        fields = load_preset_file(preset_file, backbone)
        if backbone == "auto" and "backbone" in fields:
            backbone = fields["backbone"]
        fields.pop("backbone", None)
    for option, field in ALGORITHM_OPTIONS.items():
        if options.get(option) is not None:
            fields[field] = options[option]
    if options.get("hyperpixel"):
        fields["hyperpixel_ids"] = parse_hyperpixel_ids(options["hyperpixel"])
    for option, field in (("cam_scales", "cam_scales"), ("feature_scales", "feature_scales")):
        scales = _scales(options.get(option), "--" + option.replace("_", "-"))
        if scales is not None:
            fields[field] = scales
    if options.get("low_memory"):
        fields["stream_block"] = 1024
    return SCOTConfig(backbone=backbone, weights=options.get("weights"), preset=preset, **fields)


def _stem(path: str) -> str:
    return Path(path).stem or "image"


def _read_pairs(path: Path) -> list[tuple[str, str, Optional[str]]]:
    """Rows ``source,target[,keypoints]`` of a pairs CSV; relative paths resolve from the CSV's folder."""
    from scot.errors import ScotError

    if not path.is_file():
        raise ScotError(f"--pairs: {path} does not exist or is not a file")
    base = path.parent
    pairs = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if lineno == 1 and cells[0].lower() in ("source", "src", "source_image", "imagea"):
                continue
            if len(cells) < 2 or not cells[0] or not cells[1]:
                raise ScotError(f"--pairs: {path} line {lineno}: expected 'source,target[,keypoints]'")

            def resolve(p: str) -> str:
                q = Path(p)
                return str(q if q.is_absolute() or q.exists() else base / q)

            kp = resolve(cells[2]) if len(cells) > 2 and cells[2] else None
            pairs.append((resolve(cells[0]), resolve(cells[1]), kp))
    if not pairs:
        raise ScotError(f"--pairs: {path} lists no pairs")
    return pairs


def _write_match_outputs(model, result, out_dir: Path, stem: str, top_k: int, foreground: bool,
                         src_path: str, trg_path: str) -> tuple[Path, Path]:
    """The PNG visualisation and the JSON record of one matched pair."""
    import scot
    from scot.image import load_image
    from scot.io import atomic_write_json
    from scot.viz2d import plot_matches

    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / f"{stem}.png", out_dir / f"{stem}.json"
    record = {"scot_version": scot.__version__, **model.describe(), **result.to_dict()}
    record["source"]["path"], record["target"]["path"] = src_path, trg_path
    record["drawn"] = {"top_k": top_k, "foreground_only": foreground}
    record["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
    atomic_write_json(js, record)

    matches = result.matches(top_k, foreground_only=foreground)
    n_kp = 0 if result.keypoints is None else len(result.keypoints)
    where = " on the object" if foreground and model.config.cam else ""
    subtitle = (f"{model.backbone.name} | {len(matches)} most confident of {result.src.n} matches{where}"
                + (f" | {n_kp} keypoints" if n_kp else ""))
    plot_matches(
        load_image(src_path).tensor, load_image(trg_path).tensor, matches,
        result.keypoints, result.transferred,
        title=f"{Path(src_path).name}  ->  {Path(trg_path).name}", subtitle=subtitle, path=png,
    )
    return png, js


@app.command()
@cli_errors
def match(
    src: Annotated[Optional[str], typer.Argument(help="Source image.")] = None,
    trg: Annotated[Optional[str], typer.Argument(help="Target image.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the PNG and JSON outputs.")] = Path("."),
    keypoints: Annotated[Optional[Path], typer.Option("--keypoints", "-k", help="Source keypoints to transfer: JSON [[x, y], ...] or CSV x,y rows.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Number of most confident matches to draw.")] = 100,
    foreground: Annotated[bool, typer.Option("--foreground/--anywhere", help="Draw only matches of hyperpixels on the object (CAM > 0.4), or rank all.")] = True,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="CSV of 'source,target[,keypoints]' rows to match in one run.")] = None,
    backbone: BackboneOpt = "auto",
    weights: WeightsOpt = None,
    preset: PresetOpt = "pfpascal",
    preset_file: PresetFileOpt = None,
    hyperpixel: HyperpixelOpt = None,
    device: DeviceOpt = None,
    eps: EpsOpt = None,
    exp2: Exp2Opt = None,
    sinkhorn_iters: ItersOpt = None,
    sinkhorn_tol: TolOpt = None,
    sinkhorn_mode: ModeOpt = None,
    tau: TauOpt = None,
    cam: CamOpt = None,
    rhm: RhmOpt = None,
    ot: OtOpt = None,
    cost_dtype: CostDtypeOpt = None,
    image_side: SideOpt = None,
    subpixel: SubpixelOpt = None,
    mutual: MutualOpt = None,
    feature_scales: FeatureScalesOpt = None,
    cam_scales: CamScalesOpt = None,
    cam_weighting: CamWeightingOpt = None,
    center_features: CenterOpt = None,
    symmetric: SymmetricOpt = None,
    transfer: TransferOpt = None,
    threads: ThreadsOpt = None,
    low_memory: LowMemOpt = False,
) -> None:
    """Match two images (or every pair of --pairs); write a PNG visualisation and a JSON of the matches."""
    from scot import SCOT
    from scot.errors import ScotError
    from scot.io import read_keypoints

    if top_k < 1:
        raise ScotError(f"--top-k: must be at least 1, got {top_k}")
    set_threads(threads)
    if pairs is not None:
        if src or trg:
            raise ScotError("give either SRC TRG or --pairs, not both")
        jobs = _read_pairs(pairs)
    else:
        if not src or not trg:
            raise ScotError("missing SRC and TRG images (or use --pairs FILE)")
        jobs = [(src, trg, str(keypoints) if keypoints else None)]
    if output.exists() and not output.is_dir():
        raise ScotError(f"--output: {output} exists and is not a directory")

    cfg = build_config(locals(), preset=preset)
    t_load = time.perf_counter()
    model = SCOT(cfg, notice=_err)
    load_time = time.perf_counter() - t_load

    if len(jobs) == 1:
        s, t, kp_file = jobs[0]
        kps = read_keypoints(kp_file) if kp_file else None
        t0 = time.perf_counter()
        result = model(s, t, keypoints=kps, keep_plan=False)
        run_time = time.perf_counter() - t0
        png, js = _write_match_outputs(model, result, output, f"{_stem(s)}__{_stem(t)}", top_k, foreground, s, t)
        kp_text = f", {len(kps)} keypoints transferred" if kps is not None else ""
        typer.echo(
            f"matched {Path(s).name} -> {Path(t).name}: {result.src.n}x{result.trg.n} hyperpixels{kp_text} "
            f"[{model.backbone.name}, model {load_time:.1f}s, match {run_time:.2f}s]"
        )
        typer.echo(f"  {png}\n  {js}")
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    written = 0
    t0 = time.perf_counter()
    with Progress(TextColumn("matching"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task("pairs", total=len(jobs), rate="")
        for idx, (s, t, kp_file) in enumerate(jobs):
            kps = read_keypoints(kp_file) if kp_file else None
            result = model(s, t, keypoints=kps, keep_plan=False)
            _write_match_outputs(model, result, output, f"{idx:04d}_{_stem(s)}__{_stem(t)}", top_k, foreground, s, t)
            written += 1
            elapsed = time.perf_counter() - t0
            progress.update(task, advance=1, rate=f"{written / elapsed:.2f} pairs/s")
    typer.echo(f"matched {written} pairs [{model.backbone.name}] in {time.perf_counter() - t0:.1f}s; outputs in {output}")


@app.command("eval")
@cli_errors
def eval_(
    dataset: DatasetOpt,
    datapath: DatapathOpt = Path("data"),
    split: Annotated[str, typer.Option("--split", help="test, val or trn (PF-PASCAL, SPair-71k).")] = "test",
    pair_list: PairListOpt = None,
    thres: ThresOpt = None,
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    sample: SampleOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per batched solve (0: 1 on CPU, 8 on CUDA).")] = 0,
    cache_gb: Annotated[float, typer.Option("--cache-gb", help="Memory budget of the per-image feature cache.")] = 2.0,
    save_viz: Annotated[int, typer.Option("--save-viz", help="Also draw the N worst and N best pairs.")] = 0,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Run folder (default results/<dataset>-<backbone>-<time>).")] = None,
    results: Annotated[Path, typer.Option("--results", help="Where run folders are created.")] = Path("results"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished run of this dataset and backbone (or --output-dir).")] = False,
    download: Annotated[bool, typer.Option("--download", help="Download the dataset if it is missing, without asking.")] = False,
    backbone: BackboneOpt = "auto",
    weights: WeightsOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Named settings (default: the dataset's own preset).")] = None,
    preset_file: PresetFileOpt = None,
    hyperpixel: HyperpixelOpt = None,
    device: DeviceOpt = None,
    eps: EpsOpt = None,
    exp2: Exp2Opt = None,
    sinkhorn_iters: ItersOpt = None,
    sinkhorn_tol: TolOpt = None,
    sinkhorn_mode: ModeOpt = None,
    tau: TauOpt = None,
    cam: CamOpt = None,
    rhm: RhmOpt = None,
    ot: OtOpt = None,
    cost_dtype: CostDtypeOpt = None,
    image_side: SideOpt = None,
    subpixel: SubpixelOpt = None,
    mutual: MutualOpt = None,
    feature_scales: FeatureScalesOpt = None,
    cam_scales: CamScalesOpt = None,
    cam_weighting: CamWeightingOpt = None,
    center_features: CenterOpt = None,
    symmetric: SymmetricOpt = None,
    transfer: TransferOpt = None,
    threads: ThreadsOpt = None,
    low_memory: LowMemOpt = False,
) -> None:
    """Evaluate PCK on PF-WILLOW, PF-PASCAL or SPair-71k, scored as the paper scores it."""
    from scot import SCOT
    from scot.datasets import SOURCES, DatasetMissingError, load_dataset
    from scot.errors import ScotError
    from scot.evaluate import EvalSettings, evaluate, find_resumable, format_table

    _check_thres(thres)
    if cache_gb <= 0:
        raise ScotError(f"--cache-gb: must be > 0, got {cache_gb}")
    if save_viz < 0 or batch_size < 0:
        raise ScotError("--save-viz and --batch-size must not be negative")
    set_threads(threads)
    try:
        data = load_dataset(dataset, datapath, split, pair_list)
    except DatasetMissingError as exc:
        src = SOURCES[dataset]
        ask = not download and sys.stdin is not None and sys.stdin.isatty()
        if not download and not (ask and typer.confirm(f"{exc}. Download {src.folder} ({src.approx_size}) into {datapath}?", default=False)):
            raise ScotError(f"{exc}; or rerun with --download to fetch it ({src.approx_size}) from {src.urls[0]}") from None
        _download_with_progress(dataset, datapath)
        data = load_dataset(dataset, datapath, split, pair_list)
    data = data.select(category, limit, sample)

    cfg = build_config(locals(), preset=preset or dataset)
    model = SCOT(cfg, notice=_err)
    bs = batch_size or (8 if model.device.type == "cuda" else 1)
    settings = EvalSettings(thres=thres or data.default_thres, batch_size=bs, cache_bytes=int(cache_gb * 2**30), save_viz=save_viz)

    if output_dir is None and resume:
        output_dir = find_resumable(results, dataset, model.backbone.name)
        if output_dir is None:
            raise ScotError(f"--resume: no unfinished {dataset} run with {model.backbone.name} in {results}")
    if output_dir is None:
        output_dir = results / f"{dataset}-{model.backbone.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    selection = {"category": category, "limit": limit, "sample": sample, "pairs": len(data)}
    typer.echo(f"{data.name} {data.split}: {len(data)} pairs, {len(data.image_keys())} images | {model.backbone.name} "
               f"({model.backbone.weights_source}) on {model.device} | PCK threshold: {settings.thres} | {output_dir}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[pck]}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), transient=False)
    task = progress.add_task(data.name, total=len(data), rate="", pck="")

    def on_progress(done: int, total: int, rate: float, pck: float) -> None:
        progress.update(task, completed=done, rate=f"{rate:.2f} pairs/s", pck=f"PCK@0.1 {pck:.1f}%")

    try:
        with progress:
            summary = evaluate(model, data, output_dir, settings, selection, resume=resume, on_progress=on_progress)
    except KeyboardInterrupt:
        _err(f"interrupted; scored pairs are saved in {output_dir}; continue with the same command plus --resume -o {output_dir}")
        raise typer.Exit(130)
    typer.echo(format_table(summary))
    head = summary["headline"]["value"]
    t = summary["timing"]
    typer.echo(f"PCK@0.10 (mean over {summary['pairs_scored']} pairs): {head:.2f}% | "
               f"{t['seconds_per_pair']:.3f} s/pair, {t['images_per_second'] or 0:.2f} images/s")
    typer.echo(f"results: {output_dir}")


def _check_thres(thres: str | None) -> None:
    from scot.errors import ScotError

    if thres is not None and thres not in ("img", "bbox"):
        raise ScotError(f"--thres: must be img or bbox, got '{thres}'")


def _download_with_progress(dataset: str, datapath: Path) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from scot.datasets import SOURCES, download_dataset

    with Progress(TextColumn(f"downloading {SOURCES[dataset].folder}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as prog:
        task = prog.add_task("dl", total=None)

        def update(done: int, total: int | None) -> None:
            prog.update(task, completed=done, total=total)

        download_dataset(dataset, datapath, progress=update)


@app.command("search-layers")
@cli_errors
def search_layers_cmd(
    dataset: DatasetOpt,
    datapath: DatapathOpt = Path("data"),
    split: Annotated[str, typer.Option("--split", help="Split to search on (use a validation split where there is one).")] = "test",
    pair_list: PairListOpt = None,
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    sample: SampleOpt = None,
    thres: ThresOpt = None,
    grid_stride: Annotated[int, typer.Option("--grid-stride", help="Base ids are the layers of this stride (the hyperpixel grid).")] = 4,
    base_ids: Annotated[Optional[str], typer.Option("--base-ids", help="Explicit base ids, e.g. '(2,3,4)' (overrides --grid-stride).")] = None,
    candidates: Annotated[Optional[str], typer.Option("--candidates", help="Ids that may be added (default: every id).")] = None,
    beam: Annotated[int, typer.Option("--beam", help="Beam width.")] = 3,
    max_size: Annotated[int, typer.Option("--max-size", help="Largest id set.")] = 6,
    resume_file: Annotated[Optional[Path], typer.Option("--resume-file", help="Scores are saved here after every evaluation and reused on rerun.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Preset JSON to write (load it with --preset-file).")] = Path("search-layers.json"),
    backbone: BackboneOpt = "auto",
    weights: WeightsOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Other settings (exp2) from this preset (default: the dataset's).")] = None,
    device: DeviceOpt = None,
    eps: EpsOpt = None,
    exp2: Exp2Opt = None,
    sinkhorn_iters: ItersOpt = None,
    sinkhorn_tol: TolOpt = None,
    sinkhorn_mode: ModeOpt = None,
    tau: TauOpt = None,
    cam: CamOpt = None,
    rhm: RhmOpt = None,
    ot: OtOpt = None,
    cost_dtype: CostDtypeOpt = None,
    image_side: SideOpt = None,
    subpixel: SubpixelOpt = None,
    mutual: MutualOpt = None,
    feature_scales: FeatureScalesOpt = None,
    cam_scales: CamScalesOpt = None,
    cam_weighting: CamWeightingOpt = None,
    center_features: CenterOpt = None,
    symmetric: SymmetricOpt = None,
    transfer: TransferOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Beam search over hyperpixel ids maximising PCK@0.1; writes a preset file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scot import SCOT, parse_hyperpixel_ids
    from scot.datasets import load_dataset
    from scot.errors import ScotError
    from scot.search import search_layers, write_preset

    _check_thres(thres)
    set_threads(threads)
    data = load_dataset(dataset, datapath, split, pair_list).select(category, limit, sample)
    cfg = build_config(dict(locals(), hyperpixel="(0)"), preset=preset or dataset)  # ids are what is searched
    model = SCOT(cfg, notice=_err)
    bb = model.backbone
    if base_ids:
        bases = list(parse_hyperpixel_ids(base_ids))
    else:
        side = model.config.image_side
        bases = [i for i in range(bb.num_ids) if bb.geometry(i, side, side).jump == grid_stride]
        if not bases:
            strides = sorted({bb.geometry(i, side, side).jump for i in range(bb.num_ids)})
            raise ScotError(f"--grid-stride: {bb.name} has no layer of stride {grid_stride} (strides: {strides})")
    cands = list(parse_hyperpixel_ids(candidates)) if candidates else list(range(bb.num_ids))
    thr = thres or data.default_thres
    typer.echo(f"search on {data.name} {data.split}: {len(data)} pairs, {len(data.image_keys())} images | {bb.name} | "
               f"base ids {bases} | beam {beam}, up to {max_size} ids | PCK threshold {thr}")

    best = {"score": -1.0, "ids": ()}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn()) as progress:
        images = progress.add_task("backbone passes", total=len(data.image_keys()), info="")
        depth_task = progress.add_task("depth 1", total=1, info="", visible=False)

        def on_image(i, n):
            progress.update(images, completed=i)

        def on_depth(depth, n):
            progress.reset(depth_task, total=n, description=f"depth {depth}", visible=True)

        def on_eval(ev):
            if ev.score > best["score"]:
                best.update(score=ev.score, ids=ev.ids)
            progress.update(depth_task, advance=1, info=f"best {best['score']:.2f}% {list(best['ids'])}")

        results = search_layers(model, data, thres=thr, base_ids=bases, candidate_ids=cands, beam=beam,
                                max_size=max_size, resume_file=resume_file, on_image=on_image, on_depth=on_depth,
                                on_eval=on_eval)
    command = "scot search-layers " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "scot search-layers"
    doc = write_preset(output, results, model, data, thr, command)
    typer.echo(f"{len(results)} sets evaluated; best: {doc['hyperpixel_ids']} PCK@0.10 {results[0].score:.2f}%")
    for e in results[:5]:
        typer.echo(f"  {str(list(e.ids)):<32} " + "  ".join(f"@{a}: {v:.2f}" for a, v in e.pck.items()))
    typer.echo(f"preset written to {output} (use --preset-file {output})")


bench_app = typer.Typer(no_args_is_help=True, help="Measure speed and memory, stage by stage.")
app.add_typer(bench_app, name="bench")


def _print_stage_table(rows: list[tuple[str, Any]]) -> None:
    for name, stat in rows:
        typer.echo(f"  {name:<13}{stat.ms()}")


@bench_app.command("synthetic")
@cli_errors
def bench_synthetic_cmd(
    n: Annotated[int, typer.Option("--n", help="Hyperpixels per image (a grid of about this many cells).")] = 4000,
    dim: Annotated[int, typer.Option("--dim", help="Feature dimension D.")] = 6400,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions (after two warm-up runs).")] = 5,
    cost_dtype: Annotated[str, typer.Option("--cost-dtype", help="float32, bfloat16 or both.")] = "both",
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Matching stages on random features vs the bare cosine matmul (the floor)."""
    from scot import SCOTConfig
    from scot.bench import bench_synthetic, format_bytes
    from scot.errors import ScotError
    from scot.model import resolve_device

    set_threads(threads)
    device = str(resolve_device(device or SCOTConfig.device))  # unset: the configuration's default
    dtypes = ("float32", "bfloat16") if cost_dtype == "both" else (cost_dtype,)
    if any(d not in ("float32", "bfloat16") for d in dtypes):
        raise ScotError(f"--cost-dtype: must be float32, bfloat16 or both, got '{cost_dtype}'")
    if n < 16 or dim < 1 or repeats < 1:
        raise ScotError("--n must be >= 16, --dim and --repeats >= 1")
    res = bench_synthetic(n, dim, repeats, dtypes, device)
    typer.echo(f"synthetic match: n={res['n']} x m={res['m']}, D={res['dim']}, {res['threads']} threads, {res['device']}, "
               f"median [min-max] of {repeats}")
    for dtype, r in res["dtypes"].items():
        typer.echo(f"cost dtype {dtype} (operand width {r['operand_width']}):")
        _print_stage_table(list(r["stages"].items()))
        typer.echo(f"  {'after feats':<13}{r['after_features'].ms()}")
        typer.echo(f"  {'matmul alone':<13}{r['matmul'].ms()}  = {r['gflops']:.0f} GFLOP/s")
        typer.echo(f"  ratio after-features / matmul alone: {r['ratio']:.3f}")
        if "ratio_vs_fp32_matmul" in r:
            typer.echo(f"  ratio vs the fp32 matmul: {r['ratio_vs_fp32_matmul']:.3f}, vs the bf16 matmul: {r['ratio_vs_bf16_matmul']:.3f}")
        typer.echo(f"  peak RSS: {format_bytes(r['peak_rss'])} (the process held {format_bytes(res['baseline_rss'])} "
                   f"before any operand: Python, PyTorch and its CUDA libraries)")


@bench_app.command("pairs")
@cli_errors
def bench_pairs_cmd(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Benchmark to take pairs from.")] = "pfwillow",
    datapath: Annotated[Path, typer.Option("--datapath", help="Folder holding the dataset.")] = Path("data"),
    pairs: Annotated[int, typer.Option("--pairs", help="Number of pairs (the first ones).")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions (after one warm-up round).")] = 3,
    backbone: BackboneOpt = "auto",
    weights: WeightsOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Named settings (default: the dataset's).")] = None,
    hyperpixel: HyperpixelOpt = None,
    cam: CamOpt = None,
    cost_dtype: CostDtypeOpt = None,
    image_side: SideOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    low_memory: LowMemOpt = False,
) -> None:
    """Every stage on real pairs: load, backbone, CAM, fusion, cost, Sinkhorn, RHM, transfer."""
    from scot import SCOT
    from scot.bench import bench_pairs, format_bytes
    from scot.datasets import load_dataset

    set_threads(threads)
    data = load_dataset(dataset, datapath).select(limit=pairs)
    cfg = build_config(locals(), preset=preset or dataset)
    model = SCOT(cfg, notice=_err)
    res = bench_pairs(model, [(p.src, p.trg, p.src_kps) for p in data.pairs], repeats)
    typer.echo(f"{res['pairs']} {dataset} pairs x {repeats} repeats | {res['backbone']} | cost {res['cost_dtype']} | "
               f"{res['threads']} threads, {res['device']} | median [min-max]")
    _print_stage_table(list(res["stages"].items()))
    typer.echo(f"  per image (load..fusion): {res['per_image_seconds']:.3f} s; per pair matching: "
               f"{res['per_pair_matching_seconds']:.3f} s; per pair without cache: {res['per_pair_seconds_uncached']:.3f} s")
    typer.echo(f"  after features {res['after_features'].ms()}; matmul alone {res['matmul'].ms()}; ratio {res['ratio']:.3f}")
    n, m = res["hyperpixels"]
    typer.echo(f"  memory: matching a {n} x {m} pair{' (low-memory mode)' if res['low_memory'] else ''} raised the "
               f"resident set by at most {format_bytes(res['match_peak_above'])}")


@bench_app.command("precision")
@cli_errors
def bench_precision_cmd(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Benchmark to take pairs from.")] = "pfwillow",
    datapath: Annotated[Path, typer.Option("--datapath", help="Folder holding the dataset.")] = Path("data"),
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N pairs.")] = None,
    backbone: BackboneOpt = "auto",
    weights: WeightsOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Named settings (default: the dataset's).")] = None,
    hyperpixel: HyperpixelOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """bfloat16 vs float32 cost matmul on real pairs: keypoints within 1 px, and PCK."""
    from scot import SCOT
    from scot.bench import bench_precision
    from scot.datasets import load_dataset

    set_threads(threads)
    data = load_dataset(dataset, datapath).select(limit=limit)
    cfg = build_config(locals(), preset=preset or dataset)
    model = SCOT(cfg, notice=_err)
    res = bench_precision(model, data.pairs)
    typer.echo(f"{res['pairs']} {dataset} pairs, {res['keypoints']} keypoints | {model.backbone.name}")
    typer.echo(f"  bf16 keypoints within 1 px of fp32: {100 * res['within_1px']:.2f}% (max {res['max_px']:.2f} px)")
    for name, by in res["pck"].items():
        typer.echo(f"  PCK {name:<9} " + "  ".join(f"@{a}: {v:.2f}" for a, v in by.items())
                   + f"   matching {res['matching_seconds'][name]:.1f} s")


@bench_app.command("memory")
@cli_errors
def bench_memory_cmd(
    pairs: Annotated[int, typer.Option("--pairs", help="Pairs in the synthetic evaluation.")] = 2000,
    images: Annotated[int, typer.Option("--images", help="Distinct generated images.")] = 400,
    side: Annotated[int, typer.Option("--image-side", help="Image side (small keeps the run short).")] = 96,
    cache_gb: Annotated[float, typer.Option("--cache-gb", help="Feature cache budget (small: constant eviction).")] = 0.02,
    threads: ThreadsOpt = None,
) -> None:
    """Resident memory along a long synthetic evaluation: it must stay flat."""
    from scot.bench import bench_memory_run, format_bytes

    set_threads(threads)
    res = bench_memory_run(pairs, images, side, cache_gb)
    typer.echo(f"synthetic evaluation: {res['pairs']} pairs over {res['images']} images ({side}px), cache {cache_gb} GB, "
               f"{res['seconds']:.0f} s")
    typer.echo("  pairs done -> RSS: " + ", ".join(f"{d}: {format_bytes(r)}" for d, r in res["samples"]))
    typer.echo(f"  after warm-up: first {format_bytes(res['rss_first'])}, last {format_bytes(res['rss_last'])}, "
               f"min {format_bytes(res['rss_min'])}, max {format_bytes(res['rss_max'])}")



@app.command()
@cli_errors
def layers(
    backbone: BackboneOpt = "efficientnet-lite2",
    weights: WeightsOpt = None,
    image_side: Annotated[int, typer.Option("--image-side", help="Image side to compute grid sizes for.")] = 300,
) -> None:
    """List a backbone's hyperpixel ids with their stride, receptive field and channels."""
    from scot.backbones import build_backbone

    bb = build_backbone(backbone, weights, notice=_err)
    typer.echo(f"{bb.name} ({bb.weights_source}): ids 0..{bb.num_ids - 1}, grid for a {image_side}x{image_side} image")
    typer.echo(f"{'id':>3}  {'stride':>6}  {'rf':>4}  {'channels':>8}  {'grid':>7}  layer")
    for hid, name in enumerate(bb.id_names()):
        g = bb.geometry(hid, image_side, image_side)
        typer.echo(f"{hid:>3}  {g.jump:>6}  {g.rf:>4}  {bb.channels(hid):>8}  {g.height:>3}x{g.width:<3}  {name}")


@app.command()
@cli_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the outputs.")] = Path("scot-demo"),
) -> None:
    """Match a photo that matplotlib ships against a modified copy of itself: no data, no network."""
    from scot.demo import run_demo

    res = run_demo(output, notice=_err)
    typer.echo(f"demo: {res.pair.description} [{res.backbone}]")
    typer.echo(f"{len(res.errors_px)} keypoints transferred, median error {res.median_error_px:.1f} px "
               f"(the copy's crop and scale are known)")
    typer.echo(f"  {res.png}\n  {res.json}\n  {res.pair.target}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
