"""`rasd hub ...` and `rasd bench hub`.

Each ``configure_*`` adds arguments and sets ``func``; heavy modules (torch, MONAI,
huggingface_hub) are imported inside the ``run`` functions so ``rasd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json

from rasd_hub.errors import RasdValueError

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _hub_args(parser, cache: bool = True) -> None:
    if cache:
        parser.add_argument("--cache-dir", default=None,
                            help="Hub cache directory (default: HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    parser.add_argument("--endpoint", default=None,
                        help="Hub endpoint or mirror URL (default: HF_ENDPOINT or huggingface.co)")


# ---------------------------------------------------------------------------------------------
def configure_list(parser):
    """List registered models (or, with --pretrained, the ARCH.TAG names that have weights).

    Examples:
      rasd hub list
      rasd hub list 'rasd3d*'
      rasd hub list --pretrained --json
    """
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'rasd3d*'")
    parser.add_argument("--pretrained", action="store_true", help="list ARCH.TAG names with weights")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_list)


def run_list(args) -> int:
    import rasd_hub

    names = rasd_hub.list_models(args.pattern, pretrained=args.pretrained)
    if args.pretrained:
        from rasd_hub.pretrained import get_pretrained_cfg

        rows = []
        for n in names:
            c = get_pretrained_cfg(n)
            rows.append({"name": n, "license": c.license, "description": c.description, "source": c.where})
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no pretrained weights are registered yet; `rasd hub info ARCH` says how to get them")
        else:
            for r in rows:
                print(f"{r['name']:<32} {r['source']}  {r['description']}")
        return 0
    infos = [rasd_hub.model_info(n) for n in names]
    if args.json:
        _print_json(infos)
        return 0
    tags = {i["name"]: ",".join(w["name"].split(".", 1)[1] for w in i["weights"]) or "-"
            for i in infos}

    def source(info) -> str:
        """Where create_model(NAME, pretrained=True) loads from, or how to get weights."""
        if info["weights"]:
            return info["weights"][0]["source"]
        if info["released_checkpoint"]:
            return f"none yet: rasd hub convert {info['released_checkpoint']} --install"
        return "none yet: rasd hub install WEIGHTS_DIR"

    sources = {i["name"]: source(i) for i in infos}
    width = max([len("weights"), *map(len, tags.values())])
    swidth = max([len("pretrained=True loads"), *map(len, sources.values())])
    print(f"{'name':<14} {'dims':>4} {'params':>9}  {'weights':<{width}} "
          f"{'pretrained=True loads':<{swidth}} description")
    for i in infos:
        print(f"{i['name']:<14} {i['spatial_dims']:>3}D {i['num_params'] / 1e6:>8.1f}M  "
              f"{tags[i['name']]:<{width}} {sources[i['name']]:<{swidth}} {i['description']}")
    return 0


# ---------------------------------------------------------------------------------------------
def configure_info(parser):
    """Show a model's metadata: parameters, input size, normalisation, licence, source, weights.

    NAME may also be hf-hub:ORG/REPO[@REV] or a weights directory (prints its config.json).

    Examples:
      rasd hub info rasd3d_swinb
      rasd hub info ./weights --json
    """
    parser.add_argument("name", help="ARCH, ARCH.TAG, hf-hub:ORG/REPO[@REV] or a weights directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--offline", action="store_true", default=None, help="never touch the network")
    _hub_args(parser)
    parser.set_defaults(func=run_info)


def run_info(args) -> int:
    import rasd_hub
    from rasd_hub._builder import resolve_weights
    from rasd_hub._sources import RegistryRef, parse_weights_ref

    if isinstance(parse_weights_ref(args.name), RegistryRef):
        info = rasd_hub.model_info(args.name)
    else:
        _, src = resolve_weights(args.name, False, offline=args.offline, cache_dir=args.cache_dir,
                                 endpoint=args.endpoint, need_weights=False)
        info = dict(src.config)
        info["source"] = src.label
    if args.json:
        _print_json(info)
        return 0
    for k, v in info.items():
        if k == "how_to_get_weights" and v:
            print(f"\n{v}")
        elif isinstance(v, (dict, list)):
            print(f"{k:>20}: {json.dumps(v)}")
        elif v is not None and v != "":
            print(f"{k:>20}: {v}")
    return 0


# ---------------------------------------------------------------------------------------------
def configure_download(parser):
    """Prefetch weights into the Hub cache (on a login node, before going offline).

    Each file is verified (sha256 for LFS files, git sha1 otherwise, plus any pinned hash).
    Prints the commit to pin: later loads of hf-hub:ORG/REPO@COMMIT need no network.

    Examples:
      rasd hub download hf-hub:org/rasd2d-small@main --cache-dir /shared/hf-cache
      HF_HUB_CACHE=/shared/hf-cache HF_HUB_OFFLINE=1 python train.py   # on the compute nodes
    """
    parser.add_argument("names", nargs="+", metavar="NAME", help="hf-hub:ORG/REPO[@REV], ARCH.TAG or ARCH")
    _hub_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_download)


def run_download(args) -> int:
    from rasd_hub._sources import download

    rows = download(args.names, cache_dir=args.cache_dir, endpoint=args.endpoint, offline=False)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        if "note" in r:
            print(f"{r['name']}: {r['note']} ({r['source']})")
        else:
            print(f"{r['name']}: cached and verified\n  pin:    {r['pin']}\n  sha256: {r['sha256']}  "
                  f"({r['file']})\n  path:   {r['path']}")
    return 0


# ---------------------------------------------------------------------------------------------
def configure_push(parser):
    """Upload weights (model.safetensors, config.json, README.md) to the Hub.

    Prints the commit and sha256 to pin (e.g. in a PretrainedCfg or in papers).

    Examples:
      rasd hub push ./weights my-org/rasd2d-small
      rasd hub push ./weights my-org/rasd3d-swinb --revision v1 --private
    """
    parser.add_argument("directory", help="weights directory (from save_pretrained / rasd hub export)")
    parser.add_argument("repo_id", help="ORG/REPO on the Hub")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / `hf auth login`)")
    parser.add_argument("--message", default=None, help="commit message")
    _hub_args(parser, cache=False)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_push)


def run_push(args) -> int:
    from rasd_hub.hub import push_to_hub

    res = push_to_hub(args.directory, args.repo_id, revision=args.revision, private=args.private,
                      endpoint=args.endpoint, token=args.token, commit_message=args.message,
                      verbose=False)
    if args.json:
        _print_json({"repo_id": res.repo_id, "commit": res.commit, "url": res.url,
                     "pin": res.pin, "sha256": res.sha256})
        return 0
    print(f"pushed {args.directory} to {res.repo_id}\n  commit: {res.commit}\n  url:    {res.url}")
    for name, digest in res.sha256.items():
        print(f"  sha256: {digest}  {name}")
    print(f"load with: rasd_hub.load('{res.pin}')")
    return 0


# ---------------------------------------------------------------------------------------------
def configure_export(parser):
    """Turn a pre-training checkpoint into rasd_hub weights (safetensors + config + card).

    Reads 'model', 'model_config' and 'provenance' with torch.load(weights_only=True) and keeps
    the run's measured input moments (config.json 'normalization'): the final checkpoint gives
    exactly the run's own OUT/export. OUT_DIR is written beside and swapped in as a whole.

    --format nnssl writes OUT as one nnssl checkpoint (.pth: network_weights +
    nnssl_adaptation_plan) instead, for nnU-Net's own fine-tuning from nnssl checkpoints (3D
    Residual Encoder U-Nets only); its source may also be weights rasd_hub loads (a name, tag or
    weights folder), e.g. the shipped ones.

    Examples:
      rasd hub export runs/r1/checkpoints/step_0001000.pt weights/rasd2d_small
      rasd hub export runs/resenc/checkpoints/step_0000200.pt rasd3d_resenc_small.pth --format nnssl
      rasd hub export rasd3d_resenc_small rasd3d_resenc_small.pth --format nnssl
    """
    parser.add_argument("checkpoint", help="training checkpoint (.pt); with --format nnssl also "
                        "weights rasd_hub loads (name, tag or folder)")
    parser.add_argument("out_dir", help="output weights directory (with --format nnssl: the .pth file)")
    parser.add_argument("--format", choices=("rasd", "nnssl"), default="rasd",
                        help="rasd_hub weights folder (default) or an nnssl checkpoint")
    parser.add_argument("--license", default="apache-2.0", help="licence id for the model card")
    parser.add_argument("--base-model", default=None, help="Hub id these weights were fine-tuned from")
    parser.set_defaults(func=run_export)


def run_export(args) -> int:
    from rasd_hub.convert import export_checkpoint, model_from_checkpoint
    from rasd_hub.weights import read_config

    if args.format == "nnssl":
        from rasd_hub.nnssl import write_nnssl_checkpoint

        from pathlib import Path

        from rasd_hub.nnssl import nnunet_finetuning_note

        if Path(args.checkpoint).is_file():
            model, provenance = model_from_checkpoint(args.checkpoint)
        else:  # weights rasd_hub loads: sha256-verified, provenance from their config.json
            import rasd_hub

            model = rasd_hub.load(args.checkpoint)
            provenance = dict(model.pretrained_cfg.provenance or {})
        out = write_nnssl_checkpoint(model, args.out_dir, provenance=provenance)
        print(f"exported {model.rasd_config['architecture']} to {out} (nnssl checkpoint)")
        print(f"fine-tune in nnU-Net with `nnUNetv2_preprocess_like_nnssl ... -pc {out}`, or import "
              f"it back with `rasd hub convert {out} OUT_DIR`")
        note = nnunet_finetuning_note(model)
        if note:
            print(note)
        return 0
    out = export_checkpoint(args.checkpoint, args.out_dir, license=args.license, base_model=args.base_model)
    cfg = read_config(out)
    print(f"exported {cfg['architecture']} to {out}\n  sha256: {cfg['weights']['sha256']}  model.safetensors")
    print(f"load with rasd_hub.load('{out}'); publish with `rasd hub push {out} ORG/REPO`")
    return 0


# ---------------------------------------------------------------------------------------------
def model_arg(text: str):
    """argparse type of a ``KEY=VALUE`` architecture argument: (key, JSON value or text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def configure_convert(parser):
    """Convert a released RaSD checkpoint (RaSE_B/L/H.pth, RaSE_2D.pth) into rasd_hub weights.

    Accepts the released layouts (state_dict / network_weights / net / student wrappers,
    module. / backbone. prefixes, swin_vit spelling), reads with torch.load(weights_only=True),
    loads strictly and writes model.safetensors + config.json + README.md.

    An nnssl checkpoint (network_weights + nnssl_adaptation_plan of a Residual Encoder U-Net)
    needs no --arch: its adaptation plan gives the architecture, checked field by field.

    With --install the weights are also installed on this machine (see `rasd hub install`), so
    rasd_hub.create_model(ARCH, pretrained=True) works offline from then on; OUT_DIR may then be
    left out.

    Examples:
      rasd hub convert RaSE_B.pth --install
      rasd hub convert RaSE_B.pth weights/rasd3d_swinb --arch rasd3d_swinb
      rasd hub convert RaSE_2D.pth weights/rasd2d --arch rasd2d
      rasd hub convert nnssl_resencl.pth weights/resencl_nnssl
    """
    parser.add_argument("checkpoint", help="released checkpoint (.pth) or nnssl checkpoint")
    parser.add_argument("out_dir", nargs="?", default=None,
                        help="output weights directory (optional with --install)")
    parser.add_argument("--arch", default=None,
                        help="architecture: rasd3d_swinb, rasd3d_swinl, rasd3d_swinh or rasd2d "
                        "(default: from the released file's name, RaSE_B.pth -> rasd3d_swinb; "
                        "not for nnssl checkpoints)")
    parser.add_argument("--model-arg", action="append", type=model_arg, default=[], metavar="KEY=VALUE",
                        help="override an architecture argument (VALUE is JSON), repeatable")
    parser.add_argument("--license", default="other", help="licence id for the card (default: other; "
                        "see the RaSD release for its terms)")
    parser.add_argument("--install", action="store_true",
                        help="also install the weights on this machine (as ARCH.TAG)")
    parser.add_argument("--tag", default=None, help="tag to install under (default: from the file "
                        "name, e.g. rase_b)")
    parser.set_defaults(func=run_convert)


def run_convert(args) -> int:
    import tempfile

    from rasd_hub.convert import architecture_for_release, convert_checkpoint, install_weights
    from rasd_hub.nnssl import convert_nnssl, is_nnssl_checkpoint
    from rasd_hub.weights import read_config

    if args.out_dir is None and not args.install:
        raise RasdValueError("give OUT_DIR, or --install to install the converted weights on this machine")
    nnssl = is_nnssl_checkpoint(args.checkpoint)
    if nnssl and (args.arch or args.model_arg):
        raise RasdValueError(f"{args.checkpoint} is an nnssl checkpoint: its adaptation plan "
                             "gives the architecture; drop --arch / --model-arg")
    if not nnssl:
        args.arch = args.arch or architecture_for_release(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="rasd-convert-") as tmp:
        out_dir = args.out_dir or f"{tmp}/weights"
        target = f" -> {out_dir}" if args.out_dir else ""
        if nnssl:
            out = convert_nnssl(args.checkpoint, out_dir, license=args.license)
            print(f"converted nnssl checkpoint {args.checkpoint}{target}")
        else:
            out, summary = convert_checkpoint(args.checkpoint, out_dir, args.arch,
                                              model_args=dict(args.model_arg), license=args.license)
            cfg = read_config(out)
            print(f"converted {args.checkpoint} ({args.arch}){target}")
            print(f"  layout: {', '.join(summary['steps']) or 'plain state dict'}")
            print(f"  source sha256: {summary['source_sha256']}")
            print(f"  sha256: {cfg['weights']['sha256']}  model.safetensors")
        if args.install:
            _print_installed(install_weights(out, tag=args.tag))
        else:
            print(f"load with rasd_hub.load('{out}'); install with `rasd hub install {out}`")
    return 0


def _print_installed(cfg) -> None:
    print(f"installed {cfg.name} in {cfg.path}")
    for fname, digest in cfg.sha256.items():
        print(f"  pinned sha256 {digest}  {fname}")
    print(f"load with rasd_hub.create_model('{cfg.name}', pretrained=True) (offline)")


# ---------------------------------------------------------------------------------------------
def configure_install(parser):
    """Install a weights folder on this machine, so its architecture's name loads it offline.

    The folder (from `rasd hub export`, `rasd hub convert` or save_pretrained) is validated,
    copied to $RASD_HUB_HOME/installed/ARCH.TAG (default ~/.cache/rasd_hub) and pinned by the
    sha256 of its model.safetensors and config.json. Afterwards
    rasd_hub.create_model('ARCH.TAG', pretrained=True) loads it (and create_model('ARCH', ...)
    too when no other weights are registered for ARCH); `rasd hub list` shows it.

    Examples:
      rasd hub install weights/rasd3d_swinb
      rasd hub install runs/r1/export --tag run1
    """
    parser.add_argument("directory", help="weights folder (model.safetensors, config.json, README.md)")
    parser.add_argument("--tag", default=None, help="tag (default: from the converted file's name, "
                        "e.g. rase_b, else 'installed')")
    parser.set_defaults(func=run_install)


def run_install(args) -> int:
    from rasd_hub.convert import install_weights

    _print_installed(install_weights(args.directory, tag=args.tag))
    return 0


# ---------------------------------------------------------------------------------------------
def configure_bench(parser):
    """Measure model build and weight-loading time and memory (warm Hub cache).

    For each model: time to build it (random init), time to load its weights from a warm Hub
    cache (resolve, sha256 re-verification, read, assign), and peak resident memory while loading.
    Each model is measured in a fresh subprocess.

    Example:
      rasd bench hub --models rasd3d_swinb rasd2d --repeat 3
    """
    parser.add_argument("--models", nargs="+",
                        default=["rasd2d_small", "rasd3d_small", "rasd2d", "rasd3d_swinb"],
                        help="architectures to measure")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--work-dir", default=None,
                        help="where to write the weights and cache (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from rasd_hub.bench import format_table, run_benchmark

    if args.repeat < 1:
        raise RasdValueError("--repeat must be at least 1")
    results = run_benchmark(args.models, repeat=args.repeat, work_dir=args.work_dir)
    if args.json:
        _print_json(results)
    else:
        print(format_table(results))
    return 0


