"""The Streamlit page (run by `reconstruct app`): input, settings, stages, views, downloads.

It holds no stage logic: every button calls the library function the CLI calls.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import streamlit as st

from reconstruct import paths
from reconstruct.app import state, uploads
from reconstruct.errors import ReconstructError

try:  # load_config is moving from pipeline.py to config.py
    from reconstruct.config import load_config
except ImportError:
    from reconstruct.pipeline import load_config
from reconstruct.config import preset_names, resolve_config_path


def _workdir() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=os.environ.get("RECONSTRUCT_APP_WORKDIR", "."))
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.workdir).resolve()


WORKDIR = _workdir()
ss = st.session_state
if "session_id" not in ss:
    ss.session_id = uploads.new_session_id()
    ss.image_dir = None
    ss.messages = []
SESSION = uploads.session_dir(WORKDIR, ss.session_id)
OUT = SESSION / "output"

st.set_page_config(page_title="reconstruct", layout="wide")
st.title("reconstruct: photos to a sparse 3D model")

# ----------------------------------------------------------------------------- sidebar: input
side = st.sidebar
side.header("1. Images")
source = side.radio("Input", ["Demo scene", "Upload", "Folder under workdir"], key="source")
if source == "Upload":
    files = side.file_uploader(
        "Images", type=[s.lstrip(".") for s in uploads.IMAGE_SUFFIXES], accept_multiple_files=True
    )
    if side.button("Use uploaded images", key="use_upload"):
        if not files:
            st.error("No images uploaded: drop some photos on the uploader first.")
        else:
            saved, rejected = uploads.save_uploads(
                [(f.name, f.getvalue()) for f in files],
                SESSION / "uploads",
                uploads.limits_from_env(dict(os.environ)),
            )
            for name, why in rejected.items():
                st.error(f"Rejected {name}: {why}")
            if saved:
                ss.image_dir = str(SESSION / "uploads")
                st.success(f"{len(saved)} images ready")
elif source == "Folder under workdir":
    rel = side.text_input("Folder (relative to the workdir)", key="folder")
    if side.button("Use folder", key="use_folder"):
        try:
            ss.image_dir = str(uploads.pick_folder(WORKDIR, rel))
        except ReconstructError as e:
            st.error(str(e))
else:
    n_demo = side.slider("Demo views", 4, 12, 6, key="demo_n")
    if side.button("Load demo scene", key="load_demo"):
        from reconstruct.synthetic import SceneConfig, make_scene

        with st.spinner("Rendering the demo scene"):
            scene = make_scene(
                SESSION / "demo", SceneConfig(num_images=n_demo, width=480, height=360)
            )
        ss.image_dir = str(scene.image_dir)
        st.success(f"Demo scene: {n_demo} images")

# ----------------------------------------------------------------------------- sidebar: settings
side.header("2. Settings")
presets = preset_names()
preset = side.selectbox("Preset", presets, index=presets.index("fast") if "fast" in presets else 0)
extractor = side.selectbox("Keypoints", ["aliked", "sift"], key="extractor")
max_kp = side.number_input("Max keypoints", 128, 16384, 512, step=128, key="max_kp")
resize = side.number_input("Resize (long side px, 0 = off)", 0, 8000, 640, step=32, key="resize")
strategy = side.selectbox("Pair strategy", ["retrieval", "auto", "exhaustive", "sequential"])
top_k = side.number_input("top_k", 1, 500, 20, key="top_k")
use_thr = side.checkbox("Similarity threshold", value=False, key="use_thr")
threshold = side.slider("threshold (cosine)", -1.0, 1.0, 0.5, 0.01, key="thr") if use_thr else None
min_pairs = side.number_input("min_pairs", 0, 100, 3, key="min_pairs")
mapper = side.selectbox("Mapper", ["incremental", "global"], key="mapper")
camera_mode = side.selectbox("Camera mode", ["auto", "single", "per_image", "per_folder"])
intrinsics = side.text_input("Known intrinsics file (under workdir, optional)", key="intr")


def build_config():
    overrides = {
        "keypoints": {
            "extractor": extractor,
            "max_keypoints": int(max_kp),
            "resize": int(resize) or None,
        },
        "pairs": {
            "strategy": strategy,
            "top_k": int(top_k),
            "threshold": threshold,
            "min_pairs": int(min_pairs),
        },
        "mapping": {"mapper": mapper, "camera_mode": camera_mode},
    }
    if strategy == "retrieval":  # chosen explicitly: retrieval even for small scenes (heatmap)
        overrides["pairs"]["exhaustive_if_less"] = 0
    if intrinsics.strip():
        path = (WORKDIR / intrinsics).resolve()
        if not path.is_relative_to(WORKDIR) or not path.is_file():
            raise state.InputError(f"intrinsics file {intrinsics!r} is not a file under {WORKDIR}")
        overrides["mapping"]["intrinsics"] = str(path)
    return load_config(resolve_config_path(preset), overrides)


# ----------------------------------------------------------------------------- running stages
def run_stage(stage: str) -> None:
    """Run one stage (or "all") with the library function the CLI calls."""
    from reconstruct.export import export_model
    from reconstruct.keypoints import extract_keypoints
    from reconstruct.mapping import run_mapping
    from reconstruct.matching import match_pairs
    from reconstruct.pairs import select_pairs
    from reconstruct.pipeline import run_pipeline

    image_dir = Path(ss.image_dir) if ss.image_dir else None
    config = build_config()
    if stage == "all":
        if image_dir is None:
            raise state.InputError(
                "no images yet: upload images, pick a folder or load the demo scene"
            )
        summary = run_pipeline(image_dir, OUT, config, device="cpu")
        st.success(summary.format().splitlines()[0])
        return
    state.check_can_run(stage, OUT if image_dir else None, image_dir is not None)
    OUT.mkdir(parents=True, exist_ok=True)
    f, p, m = OUT / paths.FEATURES, OUT / paths.PAIRS, OUT / paths.MATCHES
    if stage == "keypoints":
        extract_keypoints(image_dir, OUT, config.keypoints, device="cpu")
    elif stage == "pairs":
        select_pairs(image_dir, OUT, config.pairs, device="cpu")
    elif stage == "matching":
        match_pairs(p, f, OUT, config.matching, device="cpu")
    elif stage == "mapping":
        run_mapping(image_dir, f, m, OUT, config.mapping, pairs_path=p)
    elif stage == "export":
        export_model(OUT / paths.SPARSE, OUT, config.export)
    st.success(f"{stage} done")


side.header("3. Run")
cols = side.columns(2)
clicked = None
for i, stage in enumerate(state.STAGES):
    if cols[i % 2].button(stage.capitalize(), key=f"run_{stage}"):
        clicked = stage
if side.button("Run all", type="primary", key="run_all"):
    clicked = "all"
if clicked:
    try:
        with st.status(f"Running {clicked} ...", expanded=False) as status:
            run_stage(clicked)
            status.update(label=f"{clicked}: done", state="complete")
    except ReconstructError as e:
        st.error(str(e))
    except Exception as e:  # a bug, not a user error: still no traceback in the page
        st.error(f"{type(e).__name__}: {e}")

done = state.done(OUT)
st.caption(f"Images: {ss.image_dir or 'none yet'} · finished stages: {', '.join(done) or 'none'}")

# ----------------------------------------------------------------------------- views
tab_pairs, tab_matches, tab_model, tab_dl = st.tabs(["Pairs", "Matches", "Model", "Download"])

with tab_pairs:
    g = OUT / paths.GLOBAL
    if not g.exists():
        st.info("No global descriptors yet: run Keypoints and Pairs with strategy 'retrieval'.")
    else:
        import plotly.graph_objects as go

        from reconstruct.pairs import PairScores
        from reconstruct.storage import read_global_descriptors

        names, desc = read_global_descriptors(g)
        sim = PairScores.from_descriptors(desc, "cosine").rows(0, len(names))
        np.fill_diagonal(sim, np.nan)
        fig = go.Figure(go.Heatmap(z=sim, x=names, y=names, colorscale="Viridis"))
        fig.update_layout(title="Image similarity (cosine)", height=520, yaxis_autorange="reversed")
        st.plotly_chart(fig, key="heatmap")
        thr = st.slider("Preview threshold", -1.0, 1.0, 0.5, 0.01, key="preview_thr")
        cfg = build_config().pairs
        pv = state.threshold_preview(names, desc, cfg, thr)
        st.metric("Pairs kept", pv["pairs"])
        st.write(
            f"Images falling back to min_pairs={cfg.min_pairs}: "
            f"{', '.join(pv['fallback']) or 'none'}"
        )
        if pv["connected"]:
            st.success("The pair graph is connected.")
        else:
            st.warning(
                f"The pair graph splits into {pv['components']} parts (bridging will join them)."
            )

with tab_matches:
    if "matching" not in done:
        st.info("No matches yet: run Matching.")
    else:
        from reconstruct.storage import MatchesReader
        from reconstruct.viz import draw_matches

        with MatchesReader(OUT / paths.MATCHES) as mr:
            counts = []
            for n0, n1 in mr.pairs():
                counts.append((len(mr.read(n0, n1)[0]), n0, n1))
        counts.sort(
            reverse=st.radio("Order", ["best first", "worst first"], horizontal=True)
            == "best first"
        )
        if counts:
            label = st.selectbox(
                "Pair", [f"{c} matches: {a} - {b}" for c, a, b in counts], key="pair"
            )
            _, a, b = counts[[f"{c} matches: {x} - {y}" for c, x, y in counts].index(label)]
            try:
                png = draw_matches(Path(ss.image_dir), OUT, a, b)
                st.image(str(png), caption="green: inliers, red: outliers")
            except ReconstructError as e:
                st.error(str(e))

with tab_model:
    run_json = OUT / paths.RUN_SUMMARY
    if (OUT / paths.MODEL).exists():
        import plotly.graph_objects as go

        from reconstruct.export import read_points3d, read_poses

        xyz, rgb, _ = read_points3d(OUT / paths.MODEL)
        fig = go.Figure()
        fig.add_trace(
            go.Scatter3d(
                x=xyz[:, 0],
                y=xyz[:, 1],
                z=xyz[:, 2],
                mode="markers",
                name="points",
                marker=dict(size=2, color=[f"rgb({r},{g_},{b})" for r, g_, b in rgb]),
            )
        )
        scale = float(np.linalg.norm(xyz.std(0))) * 0.25 if len(xyz) else 0.2
        for name, pose in read_poses(OUT / paths.MODEL).items():
            c = pose.center
            w, h = pose.cx * 2, pose.cy * 2
            corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
            rays = np.c_[
                (corners[:, 0] - pose.cx) / pose.fx, (corners[:, 1] - pose.cy) / pose.fy, np.ones(4)
            ]
            world = (pose.rotation.T @ (rays * scale).T).T + c
            seq = [
                c,
                world[0],
                world[1],
                c,
                world[2],
                world[3],
                c,
                world[0],
                world[3],
                world[2],
                world[1],
            ]
            s = np.array(seq)
            fig.add_trace(
                go.Scatter3d(
                    x=s[:, 0],
                    y=s[:, 1],
                    z=s[:, 2],
                    mode="lines",
                    line=dict(color="red", width=2),
                    name=name,
                    showlegend=False,
                )
            )
        fig.update_layout(
            height=600, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=0, b=0)
        )
        st.plotly_chart(fig, key="model3d")
    else:
        st.info("No model yet: run Mapping and Export (or Run all).")
    if run_json.exists():
        data = json.loads(run_json.read_text())
        c, t = data.get("counts", {}), data.get("timings", {})
        m = st.columns(4)
        m[0].metric("Registered", f"{c.get('registered_images', 0)} / {c.get('images', 0)}")
        m[1].metric("Points", c.get("points", 0))
        m[2].metric("Reproj. error px", f"{c.get('mean_reprojection_error', 0):.2f}")
        m[3].metric("Track length", f"{c.get('mean_track_length', 0):.2f}")
        st.bar_chart({k: v for k, v in t.items() if k != "total"})

with tab_dl:
    if (OUT / paths.PLY).exists():
        st.download_button("points.ply", (OUT / paths.PLY).read_bytes(), "points.ply", key="dl_ply")
    if (OUT / paths.MODEL).exists():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted((OUT / paths.MODEL).rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(OUT / paths.MODEL))
        st.download_button(
            "model.zip (COLMAP .bin/.txt)", buf.getvalue(), "model.zip", key="dl_zip"
        )
    if (OUT / paths.RUN_SUMMARY).exists():
        st.download_button(
            "run.json", (OUT / paths.RUN_SUMMARY).read_bytes(), "run.json", key="dl_run"
        )
    if not done:
        st.info("Nothing to download yet.")
