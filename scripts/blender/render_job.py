"""Runs INSIDE Blender (3.4+): renders the samples of a prepared scene file with Cycles on the CPU.

    blender -b --factory-startup -P scripts/blender/render_job.py -- SCENE_JSON OUT_DIR

SCENE_JSON is written by ``pose_factory.producer.blender_render`` (normal Python): image size, Cycles settings and,
per sample, the camera (Blender camera-to-world matrix, lens, sensor width) and the body primitives
(capsules and ellipsoids around the joints of ``pose_factory.producer.figure.make_pose``) in the Z-up world frame.

For every sample it writes ``OUT_DIR/<sample_id>/``:
    rgb.png      8-bit sRGB render (Standard view transform)
    depth.npy    float32 (H, W) camera z in metres (Cycles Z pass), rows top-down; >= 1e9 where nothing is hit
    normal.npy   float32 (H, W, 3) world-space unit normals (Cycles Normal pass), rows top-down
    index.npy    float32 (H, W) object pass index: 1 person, 2 floor, 0 sky
and ``OUT_DIR/blender.json`` with the Blender version and per-sample render seconds.
Nothing here depends on the pose_factory package: Blender's bundled Python only needs numpy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import bmesh
import bpy
import numpy as np
from mathutils import Matrix

PERSON_INDEX, FLOOR_INDEX = 1, 2
FLOOR_HALF_M = 4.0
PASSES = ("depth", "normal", "index")


def _args() -> tuple[str, str]:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if len(argv) != 2:
        raise SystemExit("usage: blender -b --factory-startup -P render_job.py -- SCENE_JSON OUT_DIR")
    return argv[0], argv[1]


def _srgb_to_linear(c: float) -> float:
    c = c / 255.0
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _clear_scene() -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)


def _template_mesh(name: str, kind: str) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    if kind == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1.0)
    else:  # unit cylinder: radius 1, z in [-0.5, 0.5]
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=32, radius1=1.0, radius2=1.0, depth=1.0)
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = True
    mesh.materials.append(None)
    return mesh


class SceneBuilder:
    def __init__(self, spec: dict) -> None:
        _clear_scene()
        self.scene = bpy.context.scene
        self.spec = spec
        self.materials: dict[tuple, bpy.types.Material] = {}
        self.sphere = _template_mesh("unit-sphere", "sphere")
        self.cylinder = _template_mesh("unit-cylinder", "cylinder")
        self.person_objects: list[bpy.types.Object] = []
        self._setup_render()
        self._setup_world()
        self._setup_floor()
        self._setup_camera_and_light()
        self._setup_compositor()

    # ---------------------------------------------------------------- static parts
    def _setup_render(self) -> None:
        s, r = self.scene, self.scene.render
        r.engine = "CYCLES"
        s.cycles.device = "CPU"
        s.cycles.samples = int(self.spec.get("samples_per_pixel", 8))
        s.cycles.use_adaptive_sampling = False
        s.cycles.use_denoising = False
        s.cycles.max_bounces = 4
        # A near-zero filter keeps the Z / Normal / IndexOB passes un-blended at silhouettes.
        s.cycles.filter_width = 0.01
        s.cycles.seed = int(self.spec.get("seed", 0))
        r.resolution_x, r.resolution_y = int(self.spec["width"]), int(self.spec["height"])
        r.resolution_percentage = 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.use_compositing = True
        r.use_sequencer = False
        r.film_transparent = False
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGB"
        r.image_settings.color_depth = "8"
        s.view_settings.view_transform = "Standard"
        s.view_settings.look = "None"
        s.unit_settings.system = "METRIC"
        s.unit_settings.scale_length = 1.0
        threads = int(self.spec.get("threads", 0))
        r.threads_mode = "FIXED" if threads > 0 else "AUTO"
        if threads > 0:
            r.threads = threads
        layer = s.view_layers[0]
        layer.use_pass_z = True
        layer.use_pass_normal = True
        layer.use_pass_object_index = True

    def _setup_world(self) -> None:
        world = bpy.data.worlds.new("sky")
        world.use_nodes = True
        bg = world.node_tree.nodes["Background"]
        bg.inputs["Color"].default_value = (*(_srgb_to_linear(c) for c in (190, 208, 228)), 1.0)
        bg.inputs["Strength"].default_value = 0.8
        self.scene.world = world

    def _material(self, rgb: tuple) -> bpy.types.Material:
        key = tuple(int(c) for c in rgb)
        if key not in self.materials:
            mat = bpy.data.materials.new(f"mat-{key[0]}-{key[1]}-{key[2]}")
            mat.use_nodes = True
            bsdf = mat.node_tree.nodes["Principled BSDF"]
            bsdf.inputs["Base Color"].default_value = (*(_srgb_to_linear(c) for c in key), 1.0)
            bsdf.inputs["Roughness"].default_value = 0.7
            self.materials[key] = mat
        return self.materials[key]

    def _setup_floor(self) -> None:
        mesh = bpy.data.meshes.new("floor")
        h = FLOOR_HALF_M
        mesh.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
        mesh.uv_layers.new(name="UVMap")
        floor = bpy.data.objects.new("floor", mesh)
        floor.pass_index = FLOOR_INDEX
        mat = bpy.data.materials.new("floor")
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        checker = nodes.new("ShaderNodeTexChecker")
        checker.inputs["Scale"].default_value = 2 * h / 0.5  # 0.5 m squares like the synthetic stage
        checker.inputs["Color1"].default_value = (*(_srgb_to_linear(c) for c in (168, 164, 156)), 1.0)
        checker.inputs["Color2"].default_value = (*(_srgb_to_linear(c) for c in (128, 124, 118)), 1.0)
        coords = nodes.new("ShaderNodeTexCoord")
        links.new(coords.outputs["UV"], checker.inputs["Vector"])
        links.new(checker.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
        mesh.materials.append(mat)
        self.scene.collection.objects.link(floor)

    def _setup_camera_and_light(self) -> None:
        cam_data = bpy.data.cameras.new("camera")
        cam_data.sensor_fit = "AUTO"
        cam_data.clip_start, cam_data.clip_end = 0.01, 1000.0
        cam_data.shift_x = cam_data.shift_y = 0.0
        self.camera = bpy.data.objects.new("camera", cam_data)
        self.scene.collection.objects.link(self.camera)
        self.scene.camera = self.camera
        sun_data = bpy.data.lights.new("key", type="SUN")
        sun_data.energy = 3.0
        sun_data.angle = math.radians(5.0)
        self.sun = bpy.data.objects.new("key", sun_data)
        self.scene.collection.objects.link(self.sun)

    def _setup_compositor(self) -> None:
        s = self.scene
        s.use_nodes = True
        tree = s.node_tree
        tree.nodes.clear()
        layers = tree.nodes.new("CompositorNodeRLayers")
        composite = tree.nodes.new("CompositorNodeComposite")
        tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.format.file_format = "OPEN_EXR"
        out.format.color_depth = "32"
        out.format.color_mode = "RGB"
        out.format.exr_codec = "ZIP"
        out.file_slots.clear()
        for name, socket in zip(PASSES, ("Depth", "Normal", "IndexOB")):
            out.file_slots.new(f"{name}_")
            tree.links.new(layers.outputs[socket], out.inputs[f"{name}_"])
        self.file_output = out

    # ---------------------------------------------------------------- per sample
    def _add_person(self, name: str, mesh: bpy.types.Mesh, matrix: Matrix, rgb: tuple) -> None:
        obj = bpy.data.objects.new(name, mesh)
        obj.matrix_world = matrix
        obj.pass_index = PERSON_INDEX
        obj.material_slots[0].link = "OBJECT"
        obj.material_slots[0].material = self._material(rgb)
        self.scene.collection.objects.link(obj)
        self.person_objects.append(obj)

    def set_figure(self, primitives: list[dict]) -> None:
        for obj in self.person_objects:
            bpy.data.objects.remove(obj, do_unlink=True)
        self.person_objects = []
        for i, prim in enumerate(primitives):
            rgb = prim["color"]
            if prim["kind"] == "cap":
                a, b, r = np.asarray(prim["a"]), np.asarray(prim["b"]), float(prim["r"])
                for end, point in (("a", a), ("b", b)):
                    self._add_person(f"p{i}-{end}", self.sphere,
                                     Matrix.Translation(point.tolist()) @ Matrix.Diagonal((r, r, r, 1.0)), rgb)
                axis = b - a
                length = float(np.linalg.norm(axis))
                if length < 1e-6:
                    continue
                z = axis / length
                helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
                x = np.cross(helper, z)
                x /= np.linalg.norm(x)
                y = np.cross(z, x)
                m = np.eye(4)
                m[:3, :3] = np.stack([x * r, y * r, z * length], axis=1)
                m[:3, 3] = 0.5 * (a + b)
                self._add_person(f"p{i}-body", self.cylinder, Matrix(m.tolist()), rgb)
            else:
                rot, radii = np.asarray(prim["rot"]), np.asarray(prim["radii"])
                m = np.eye(4)
                m[:3, :3] = rot * radii[None, :]
                m[:3, 3] = prim["c"]
                self._add_person(f"p{i}", self.sphere, Matrix(m.tolist()), rgb)

    def set_camera(self, cam: dict) -> None:
        self.camera.matrix_world = Matrix(cam["matrix_world"])
        self.camera.data.lens = float(cam["lens_mm"])
        self.camera.data.sensor_width = float(cam["sensor_mm"])
        # Key light rides with the camera, above and to the left, like the synthetic shader.
        rot = Matrix(cam["matrix_world"]).to_3x3()
        tilt = Matrix.Rotation(math.radians(35.0), 3, "X") @ Matrix.Rotation(math.radians(-30.0), 3, "Y")
        self.sun.matrix_world = (rot @ tilt).to_4x4()

    def render(self, sample_dir: str) -> None:
        os.makedirs(sample_dir, exist_ok=True)
        self.scene.frame_set(1)
        self.file_output.base_path = sample_dir
        self.scene.render.filepath = os.path.join(sample_dir, "rgb.png")
        bpy.ops.render.render(write_still=True)
        w, h = self.scene.render.resolution_x, self.scene.render.resolution_y
        for name in PASSES:
            exr = os.path.join(sample_dir, f"{name}_0001.exr")
            img = bpy.data.images.load(exr, check_existing=False)
            img.colorspace_settings.name = "Non-Color"
            buf = np.empty(w * h * 4, dtype=np.float32)
            img.pixels.foreach_get(buf)
            bpy.data.images.remove(img)
            px = buf.reshape(h, w, 4)[::-1]  # Blender rows are bottom-up
            if name == "normal":
                arr = px[..., :3]
            else:
                arr = px[..., 0]
            np.save(os.path.join(sample_dir, f"{name}.npy"), np.ascontiguousarray(arr, dtype=np.float32))
            os.remove(exr)


def main() -> None:
    spec_path, out_dir = _args()
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.makedirs(out_dir, exist_ok=True)
    builder = SceneBuilder(spec)
    timings = {}
    for sample in spec["samples"]:
        start = time.perf_counter()
        builder.set_figure(sample["primitives"])
        builder.set_camera(sample["camera"])
        builder.render(os.path.join(out_dir, sample["sample_id"]))
        timings[sample["sample_id"]] = round(time.perf_counter() - start, 3)
        print(f"pose-factory: rendered {sample['sample_id']} in {timings[sample['sample_id']]:.2f}s", flush=True)
    info = {"blender_version": bpy.app.version_string, "render_engine": "CYCLES", "device": "CPU",
            "samples_per_pixel": builder.scene.cycles.samples, "render_seconds": timings}
    with open(os.path.join(out_dir, "blender.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # make Blender exit non-zero instead of idling on a Python error
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1 if not isinstance(exc, SystemExit) or exc.code else 0)
    sys.stdout.flush()
    os._exit(0)
