"""The Streamlit page (run by `reconstruct app`): input, settings, stages, views, downloads.

It holds no stage logic: every button calls the library function the CLI calls (through
`state.run_stage`), in a background thread per session (`jobs.Job`) whose progress the page polls.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import streamlit as st

from reconstruct import paths
from reconstruct.app import state, uploads
from reconstruct.app.jobs import Job
from reconstruct.config import preset_names, resolve_config_path
from reconstruct.errors import InputError, ReconstructError
from reconstruct.settings import load_config

# How often the page redraws the progress of a running job. (A comment, not a docstring:
# Streamlit's "magic" would print a bare string into the page.)
POLL_SECONDS = 0.5
DEMO_GT = "Demo scene's ground truth"


def _workdir() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=os.environ.get("RECONSTRUCT_APP_WORKDIR", "."))
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.workdir).resolve()


WORKDIR = _workdir()
# The page shows the running job's INFO lines (app.jobs); this is an entry point, like the CLI,
# so it may set the package's level. No handler here: nothing goes to the terminal.
logging.getLogger("reconstruct").setLevel(logging.INFO)
ss = st.session_state
if "session_id" not in ss:
    ss.session_id = uploads.new_session_id()
    ss.image_dir = None
    ss.demo_gt = None
    ss.job = None
    ss.job_reported = True
    ss.incomplete = set()  # stages a cancelled run left unfinished (their files hold a part)
SESSION = uploads.session_dir(WORKDIR, ss.session_id)
OUT = SESSION / "output"

st.set_page_config(page_title="reconstruct", layout="wide")
st.title("reconstruct: photos to a sparse 3D model")

# A job that ended since the last full run: note which stages it left unfinished, once.
job: Job | None = ss.job
if job is not None and not job.running and not ss.job_reported:
    ss.job_reported = True
    scope = set(state.PIPELINE_STAGES) if job.scope == "all" else {job.scope}
    if job.state == "done":
        ss.incomplete = ss.incomplete - scope
    elif job.state == "cancelled":
        ss.incomplete = ss.incomplete | state.incomplete_after_cancel(job.scope, job.cancelled_in)
busy = job is not None and job.running

# ----------------------------------------------------------------------------- sidebar: input
side = st.sidebar
side.header("1. Images")
source = side.radio("Input", ["Demo scene", "Upload", "Folder under workdir"], key="source")
if source == "Upload":
    files = side.file_uploader(
        "Images", type=[s.lstrip(".") for s in uploads.IMAGE_SUFFIXES], accept_multiple_files=True
    )
    if side.button("Use uploaded images", key="use_upload", disabled=busy):
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
    if side.button("Use folder", key="use_folder", disabled=busy):
        try:
            ss.image_dir = str(uploads.pick_folder(WORKDIR, rel))
        except ReconstructError as e:
            st.error(str(e))
else:
    n_demo = side.slider("Demo views", 4, 12, 6, key="demo_n")
    if side.button("Load demo scene", key="load_demo", disabled=busy):
        from reconstruct.synthetic import SceneConfig, make_scene

        with st.spinner("Rendering the demo scene"):
            scene = make_scene(
                SESSION / "demo", SceneConfig(num_images=n_demo, width=480, height=360)
            )
        ss.image_dir = str(scene.image_dir)
        ss.demo_gt = str(scene.gt_path)
        ss.gt_source = DEMO_GT  # the Evaluation tab compares with the demo's known cameras
        st.success(f"Demo scene: {n_demo} images")

# ----------------------------------------------------------------------------- sidebar: settings
side.header("2. Settings")
presets = preset_names()
preset = side.selectbox("Preset", presets, index=presets.index("fast") if "fast" in presets else 0)
if ss.get("preset_shown") != preset:
    # The settings below start from the chosen preset's values (the library's dataclass defaults
    # overridden by the preset file), and start again from them when the preset changes.
    base = load_config(resolve_config_path(preset))
    ss.update(
        extractor=base.keypoints.extractor,
        max_kp=int(base.keypoints.max_keypoints),
        resize=int(base.keypoints.resize or 0),
        top_k=int(base.pairs.top_k or 500),
        min_pairs=int(base.pairs.min_pairs),
        mapper=base.mapping.mapper,
        camera_mode=base.mapping.camera_mode,
        preset_shown=preset,
    )
extractor = side.selectbox("Keypoints", ["aliked", "sift"], key="extractor")
max_kp = side.number_input("Max keypoints", 128, 16384, step=128, key="max_kp")
resize = side.number_input("Resize (long side px, 0 = off)", 0, 8000, step=32, key="resize")
# retrieval first: the Pairs tab's heatmap and threshold preview need descriptors, also on the
# small scenes people try in a browser
strategy = side.selectbox("Pair strategy", ["retrieval", "auto", "exhaustive", "sequential"])
top_k = side.number_input("top_k", 1, 500, key="top_k")
use_thr = side.checkbox("Similarity threshold", value=False, key="use_thr")
threshold = side.slider("threshold (cosine)", -1.0, 1.0, 0.5, 0.01, key="thr") if use_thr else None
min_pairs = side.number_input("min_pairs", 0, 100, key="min_pairs")
mapper = side.selectbox("Mapper", ["incremental", "global"], key="mapper")
camera_mode = side.selectbox(
    "Camera mode", ["auto", "single", "per_image", "per_folder"], key="camera_mode"
)
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
            raise InputError(f"intrinsics file {intrinsics!r} is not a file under {WORKDIR}")
        overrides["mapping"]["intrinsics"] = str(path)
    return load_config(resolve_config_path(preset), overrides)


# ----------------------------------------------------------------------------- running stages
side.header("3. Run")
cols = side.columns(2)
clicked = None
for i, stage in enumerate(state.STAGES):
    if cols[i % 2].button(stage.capitalize(), key=f"run_{stage}", disabled=busy):
        clicked = stage
if side.button("Run all", type="primary", key="run_all", disabled=busy):
    clicked = "all"
if clicked:
    try:
        image_dir = Path(ss.image_dir) if ss.image_dir else None
        if image_dir is None:
            raise InputError("no images yet: upload images, pick a folder or load the demo scene")
        if clicked != "all":  # here, so that the order error shows at once
            state.check_can_run(clicked, OUT, True, ss.incomplete)
        call = functools.partial(state.run_stage, clicked, image_dir, OUT, build_config())
        ss.job, ss.job_reported = Job(clicked, call).start(), False
        job, busy = ss.job, True
    except ReconstructError as e:
        st.error(str(e))


def _written_since(t: float) -> list[str]:
    out = [OUT / state.PRODUCES[s] for s in state.PIPELINE_STAGES]
    return [
        s
        for s, p in zip(state.PIPELINE_STAGES, out, strict=True)
        if p.exists() and p.stat().st_mtime >= t
    ]


def job_panel() -> None:
    """The progress of the session's job (per stage, per image or pair), Cancel, its outcome."""
    job: Job | None = ss.job
    if job is None:
        return
    if not job.running:
        if not ss.job_reported:  # it ended while this fragment polled: redraw every view
            st.rerun()
        if job.state == "done":
            outcome, *warnings = job.message.splitlines() or [""]
            st.success(outcome)
            for line in warnings:  # state.summary_message: the run summary's warnings
                st.warning(line)
        elif job.state == "cancelled":
            st.warning(f"Cancelled: {job.message}.")
        else:
            st.error(job.message)
        return
    order = state.PIPELINE_STAGES if job.scope == "all" else (job.scope,)
    current = state.current_stage(job.scope, job.last_bar, _written_since(job.started))
    i = order.index(current)
    st.progress(i / len(order), text=f"Stage {i + 1}/{len(order)}: {current}")
    for step in job.steps():
        frac = min(1.0, step.done / step.total) if step.total else 0.0
        st.progress(frac, text=state.step_text(step.stage, step.done, step.total, step.unit))
    for line in job.log_tail():
        st.caption(line)
    if job.cancel_requested:
        st.info("Cancelling: the image or pair in flight finishes, finished work is kept.")
    elif st.button("Cancel", key="cancel"):
        job.cancel()
        st.info("Cancelling: the image or pair in flight finishes, finished work is kept.")


if busy:
    st.fragment(run_every=POLL_SECONDS)(job_panel)()
else:
    job_panel()

done = state.done(OUT, ss.incomplete)
unfinished = [s for s in state.PIPELINE_STAGES if s in ss.incomplete]
st.caption(
    f"Images: {ss.image_dir or 'none yet'} · finished stages: {', '.join(done) or 'none'}"
    + (f" · unfinished (cancelled): {', '.join(unfinished)}" if unfinished else "")
)

# ----------------------------------------------------------------------------- views
tab_pairs, tab_matches, tab_model, tab_eval, tab_dl = st.tabs(
    ["Pairs", "Matches", "Model", "Evaluation", "Download"]
)


@st.cache_data(show_spinner="Counting inliers")
def _pair_inliers(output_dir: str, stamp: float) -> list[tuple[int, int, str, str]]:
    return state.pair_inliers(Path(output_dir))


@st.cache_data(show_spinner="Evaluating")
def _evaluate(output_dir: str, gt_path: str, stamps: tuple[float, float]):
    from reconstruct.evaluation import evaluate_reconstruction

    return evaluate_reconstruction(Path(output_dir), Path(gt_path))


with tab_pairs:
    g = state.global_descriptors_path(OUT)
    if g is None:
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
        try:
            cfg = build_config().pairs
        except ReconstructError as e:
            st.error(str(e))
        else:
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
                    f"The pair graph splits into {pv['components']} parts "
                    "(bridging will join them)."
                )

with tab_matches:
    if "matching" not in done:
        st.info("No matches yet: run Matching.")
    else:
        from reconstruct.viz import draw_matches

        rows = _pair_inliers(str(OUT), (OUT / paths.MATCHES).stat().st_mtime)
        order = st.radio("Order", ["worst first", "best first"], horizontal=True, key="order")
        if order == "best first":
            rows = rows[::-1]
        if not rows:
            st.info("No pair was matched.")
        else:
            labels = [f"{i} inliers / {m} matches: {a} - {b}" for i, m, a, b in rows]
            label = st.selectbox("Pair (sorted by inliers)", labels, key="pair")
            _, _, a, b = rows[labels.index(label)]
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

        # The geometry of viz.draw_model (the CLI's `viz model` picture), drawn by plotly: z up
        # as the cameras see it, the robust view box, frusta 6 % of the box deep.
        from reconstruct.viz import _up_frame, frustum_lines, model_view

        try:
            xyz, rgb, _ = read_points3d(OUT / paths.MODEL)
            poses = list(read_poses(OUT / paths.MODEL).values())
            frame = _up_frame(poses)
            pts = xyz @ frame.T
            centres = np.array([p.center for p in poses]).reshape(-1, 3) @ frame.T
            view = model_view(pts, centres)
        except ReconstructError as e:
            st.error(str(e))
        else:
            depth = 0.06 * float(view.hi[0] - view.lo[0])
            lines = [np.full((1, 3), np.nan)]  # segments separated by NaN rows (plotly gaps)
            for pose in poses:
                for a, b in frustum_lines(pose, depth) @ frame.T:
                    lines += [a[None], b[None], np.full((1, 3), np.nan)]
            seg = np.concatenate(lines)
            fig = go.Figure(
                [
                    go.Scatter3d(
                        x=pts[:, 0],
                        y=pts[:, 1],
                        z=pts[:, 2],
                        mode="markers",
                        name="points",
                        marker=dict(size=2, color=[f"rgb({r},{g},{b})" for r, g, b in rgb]),
                    ),
                    go.Scatter3d(
                        x=seg[:, 0],
                        y=seg[:, 1],
                        z=seg[:, 2],
                        mode="lines",
                        name="cameras",
                        line=dict(color="red", width=3),
                        hoverinfo="skip",
                    ),
                ]
            )
            box = {
                f"{axis}axis": dict(range=[float(view.lo[k]), float(view.hi[k])], title=axis)
                for k, axis in enumerate("xyz")
            }
            fig.update_layout(
                height=600,
                showlegend=False,
                scene=dict(aspectmode="cube", **box),
                margin=dict(l=0, r=0, t=0, b=0),
            )
            st.plotly_chart(fig, key="model3d")
            st.caption(
                f"{len(poses)} cameras (red), {len(xyz)} points; outside the view box: "
                f"{view.cameras_outside} cameras, {view.points_outside} points"
            )
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

with tab_eval:
    st.write(
        "Compare the model with known cameras: a `cameras.txt` with one line per image "
        "`name fx fy cx cy qw qx qy qz tx ty tz` (world-to-camera)."
    )
    choices = ["Upload cameras.txt", "File under workdir"]
    if ss.demo_gt:
        choices.insert(0, DEMO_GT)
    gt_source = st.radio("Ground truth", choices, horizontal=True, key="gt_source")
    gt_path: Path | None = None
    try:
        if gt_source == DEMO_GT:
            gt_path = Path(ss.demo_gt)
        elif gt_source == "Upload cameras.txt":
            up = st.file_uploader("cameras.txt", type=["txt"], key="gt_upload")
            if up is not None:
                gt_path = uploads.save_text_upload(
                    up.getvalue(),
                    SESSION / "gt" / "cameras.txt",
                    uploads.limits_from_env(dict(os.environ)),
                )
        else:
            rel_gt = st.text_input("cameras.txt (relative to the workdir)", key="gt_rel")
            if rel_gt.strip():
                gt_path = uploads.pick_file(WORKDIR, rel_gt)
        if gt_path is not None and not (OUT / paths.SPARSE).is_dir():
            st.info("No model yet: run Mapping (or Run all), then the evaluation shows here.")
        elif gt_path is not None:
            sparse = OUT / paths.SPARSE
            metrics = _evaluate(
                str(OUT), str(gt_path), (sparse.stat().st_mtime, gt_path.stat().st_mtime)
            )
            e = st.columns(4)
            e[0].metric(
                "Registered (GT images)", f"{metrics.num_registered} / {metrics.num_gt_images}"
            )
            span = f"{min(metrics.thresholds_deg):g}-{max(metrics.thresholds_deg):g}"
            e[1].metric(f"mAA ({span} deg)", f"{metrics.maa:.3f}")
            for col, t, a in zip(e[2:], metrics.auc_thresholds_deg, metrics.auc, strict=False):
                col.metric(f"AUC @{t:g} deg", f"{a:.3f}")
            st.caption(
                f"Relative pose over {metrics.num_pairs} image pairs "
                f"({metrics.num_pairs_failed} not co-registered); camera-centre mAA "
                f"{metrics.center_maa:.3f}. AUC at all thresholds: "
                + ", ".join(
                    f"@{t:g} {a:.3f}"
                    for t, a in zip(metrics.auc_thresholds_deg, metrics.auc, strict=True)
                )
            )
            images = getattr(metrics, "images", ())  # per-image errors (newer evaluation.py)
            if images:
                st.subheader("Per-image errors (worst first)")
                st.dataframe(
                    [
                        {
                            "image": r.name,
                            "status": r.status,
                            "model": r.model,
                            "rotation error (deg)": r.rotation_error_deg,
                            "centre error": r.center_error,
                            "centre error (% of extent)": 100 * r.center_error_relative,
                        }
                        for r in images
                    ],
                    key="eval_images",
                    hide_index=True,
                )
    except ReconstructError as err:
        st.error(str(err))

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
