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
from mathutils import Matrix, Vector

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
        self.device = choose_device(s, self.spec.get("device", "auto"))
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

    def render(self, sample_dir: str, frame: int = 1) -> None:
        os.makedirs(sample_dir, exist_ok=True)
        if frame != self.scene.frame_current:
            self.scene.frame_set(frame)
        self.file_output.base_path = sample_dir
        self.scene.render.filepath = os.path.join(sample_dir, "rgb.png")
        bpy.ops.render.render(write_still=True)
        w, h = self.scene.render.resolution_x, self.scene.render.resolution_y
        for name in PASSES:
            # The file output node numbers its files by the current frame.
            exr = os.path.join(sample_dir, f"{name}_{self.scene.frame_current:04d}.exr")
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


# ============================================================================ devices


def choose_device(scene: bpy.types.Scene, wanted: str) -> dict:
    """Cycles on the GPU when Blender reports one (OptiX first, then CUDA, HIP, oneAPI), else the CPU."""
    scene.cycles.device = "CPU"
    if wanted == "CPU":
        return {"type": "CPU", "names": []}
    try:
        prefs = bpy.context.preferences.addons["cycles"].preferences
    except KeyError:
        return {"type": "CPU", "names": []}
    for kind in ("OPTIX", "CUDA", "HIP", "ONEAPI"):
        try:
            prefs.compute_device_type = kind
        except TypeError:
            continue  # this build has no such backend
        prefs.get_devices()
        found = [d for d in prefs.devices if d.type == kind]
        if not found:
            continue
        for device in prefs.devices:
            device.use = device.type == kind
        scene.cycles.device = "GPU"
        return {"type": kind, "names": [d.name for d in found]}
    if wanted == "GPU":
        raise SceneFailure("no_gpu", "the job asks for the GPU but Blender reports no OptiX, CUDA, HIP or oneAPI "
                           "device")
    return {"type": "CPU", "names": []}


# ============================================================================ the user's scene


class SceneFailure(Exception):
    """A problem with the user's scene, reported to pose_factory through OUT_DIR/error.json."""

    def __init__(self, kind: str, message: str, names: list | None = None):
        super().__init__(message)
        self.kind, self.message, self.names = kind, message, names or []


def _open_blend(path: str) -> None:
    if not os.path.isfile(path):
        raise SceneFailure("missing_file", f"no .blend file at {path}")
    try:
        bpy.ops.wm.open_mainfile(filepath=path, load_ui=False)
    except RuntimeError as exc:
        raise SceneFailure("unreadable_file", f"Blender cannot open {path}: {str(exc).strip()}") from None


def _find_rig(spec: dict) -> tuple:
    """(armature object, the character's mesh objects) named by the job."""
    scene = bpy.context.scene
    names = sorted(o.name for o in scene.objects)
    character = spec.get("character")
    obj = scene.objects.get(character) if character else None
    if character and obj is None:
        raise SceneFailure("no_character", f"the scene has no object {character!r}", names)
    armature = None
    if spec.get("armature"):
        armature = scene.objects.get(spec["armature"])
        if armature is None or armature.type != "ARMATURE":
            raise SceneFailure("no_armature", f"the scene has no armature {spec['armature']!r}",
                               sorted(o.name for o in scene.objects if o.type == "ARMATURE"))
    elif obj is not None and obj.type == "ARMATURE":
        armature = obj
    elif obj is not None:
        mods = [m.object for m in obj.modifiers if m.type == "ARMATURE" and m.object]
        armature = mods[0] if mods else (obj.parent if obj.parent and obj.parent.type == "ARMATURE" else None)
    else:
        found = [o for o in scene.objects if o.type == "ARMATURE"]
        armature = found[0] if len(found) == 1 else None
    if armature is None:
        raise SceneFailure("no_armature", "cannot tell which armature drives the character: name it in rig.armature",
                           sorted(o.name for o in scene.objects if o.type == "ARMATURE"))
    meshes = [o for o in scene.objects if o.type == "MESH" and (
        o.parent == armature or any(m.type == "ARMATURE" and m.object == armature for m in o.modifiers))]
    if obj is not None and obj.type == "MESH" and obj not in meshes:
        meshes.append(obj)
    if not meshes:
        raise SceneFailure("no_mesh", f"no mesh is deformed by or parented to the armature {armature.name!r}", names)
    return armature, meshes


def _shim_bvh_importer() -> None:
    """Debian's Blender 3.4 bundles an io_anim_bvh that opens files with mode 'rU', which its Python 3.11
    rejects ("invalid mode: 'rU'"); give that module an open() that drops the obsolete 'U'."""
    try:
        from io_anim_bvh import import_bvh
    except ImportError:
        return
    import builtins

    def _open(file, mode="r", *args, **kwargs):
        return builtins.open(file, mode.replace("U", ""), *args, **kwargs)

    import_bvh.open = _open


class Motion:
    """The character's motion: a BVH retargeted by bone name, an action of the .blend, or the scene's own."""

    def __init__(self, spec: dict, armature: bpy.types.Object) -> None:
        self.armature, self.source, self.pairs = armature, None, []
        motion = spec.get("motion") or {}
        scene = bpy.context.scene
        if motion.get("bvh"):
            path = motion["bvh"]
            if not os.path.isfile(path):
                raise SceneFailure("missing_file", f"no BVH file at {path}")
            before = set(bpy.data.objects)
            _shim_bvh_importer()
            try:
                bpy.ops.import_anim.bvh(filepath=path, target="ARMATURE", use_fps_scale=False,
                                        update_scene_fps=False, update_scene_duration=False,
                                        global_scale=float(motion.get("scale", 1.0)))
            except RuntimeError as exc:
                raise SceneFailure("unreadable_file", f"Blender cannot import {path}: {str(exc).strip()}") from None
            created = [o for o in bpy.data.objects if o not in before and o.type == "ARMATURE"]
            if not created:
                raise SceneFailure("unreadable_file", f"{path} holds no skeleton")
            self.source = created[0]
            self.source.hide_render = True
            action = self.source.animation_data.action
            self.range = (int(action.frame_range[0]), int(action.frame_range[1]))
            # Retarget by bone name: parents first, so each child's head follows its posed parent.
            for bone in armature.data.bones:
                if bone.name in self.source.data.bones:
                    self.pairs.append(bone.name)
            depth = {b.name: len(b.parent_recursive) for b in armature.data.bones}
            self.pairs.sort(key=lambda name: depth[name])
            if not self.pairs:
                raise SceneFailure("bvh_mismatch", f"no joint of {path} has the name of a bone of {armature.name!r}",
                                   sorted(b.name for b in armature.data.bones))
        elif motion.get("action"):
            action = bpy.data.actions.get(motion["action"])
            if action is None:
                raise SceneFailure("no_action", f"the .blend has no action {motion['action']!r}",
                                   sorted(a.name for a in bpy.data.actions))
            armature.animation_data_create()
            armature.animation_data.action = action
            self.range = (int(action.frame_range[0]), int(action.frame_range[1]))
        elif armature.animation_data and armature.animation_data.action:
            action = armature.animation_data.action
            self.range = (int(action.frame_range[0]), int(action.frame_range[1]))
        else:
            self.range = (scene.frame_current, scene.frame_current)

    def apply(self, frame: int) -> None:
        """Pose the character at this frame."""
        scene = bpy.context.scene
        scene.frame_set(frame)
        if self.source is None:
            return
        src, dst = self.source, self.armature
        layer = bpy.context.view_layer
        for name in self.pairs:
            s_bone, d_bone = src.pose.bones[name], dst.pose.bones[name]
            rest_s = src.matrix_world @ s_bone.bone.matrix_local
            pose_s = src.matrix_world @ s_bone.matrix
            delta = pose_s @ rest_s.inverted()  # world-space motion of the BVH joint from its rest
            rest_d = dst.matrix_world @ d_bone.bone.matrix_local
            target = delta @ rest_d
            if d_bone.parent is not None and d_bone.bone.use_connect:
                target.translation = (dst.matrix_world @ d_bone.matrix).translation  # stays on its parent
            d_bone.matrix = dst.matrix_world.inverted() @ target
            layer.update()


def _point(ref: str, armature, meshes, depsgraph) -> list:
    if ref.startswith("vertex:"):
        group = ref[len("vertex:"):]
        total, count = Vector((0.0, 0.0, 0.0)), 0
        for obj in meshes:
            index = obj.vertex_groups.find(group)
            if index < 0:
                continue
            evaluated = obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            source = obj.data
            for v_src, v_eval in zip(source.vertices, mesh.vertices):
                if any(g.group == index and g.weight > 0.0 for g in v_src.groups):
                    total += evaluated.matrix_world @ v_eval.co
                    count += 1
            evaluated.to_mesh_clear()
        return list(total / count) if count else None
    name, _, end = ref.rpartition(":") if ref.endswith((":head", ":tail")) else (ref, "", "head")
    bone = armature.pose.bones[name]
    return list(armature.matrix_world @ (bone.tail if end == "tail" else bone.head))


def _check_refs(refs: list, armature, meshes) -> None:
    bones = {b.name for b in armature.data.bones}
    groups = {g.name for o in meshes for g in o.vertex_groups}
    missing = []
    for ref in refs:
        if ref.startswith("vertex:"):
            if ref[len("vertex:"):] not in groups:
                missing.append(ref)
        else:
            name = ref.rpartition(":")[0] if ref.endswith((":head", ":tail")) else ref
            if name not in bones:
                missing.append(ref)
    if missing:
        raise SceneFailure("missing_bones", "the rig mapping names what the armature "
                           f"{armature.name!r} lacks: {', '.join(missing)}", sorted(bones))


def _bounds(meshes, depsgraph) -> list:
    lo, hi = [math.inf] * 3, [-math.inf] * 3
    for obj in meshes:
        evaluated = obj.evaluated_get(depsgraph)
        for corner in evaluated.bound_box:
            p = evaluated.matrix_world @ Vector(corner)
            lo = [min(a, b) for a, b in zip(lo, p)]
            hi = [max(a, b) for a, b in zip(hi, p)]
    return [lo, hi]


def _setup_user_scene(spec: dict) -> tuple:
    _open_blend(spec["blend_file"])
    armature, meshes = _find_rig(spec)
    _check_refs(spec.get("points", []), armature, meshes)
    return armature, meshes, Motion(spec, armature)


def probe_user_scene(spec: dict, out_dir: str) -> None:
    """Check the scene, character, mapping and motion; write the mapped points and the body's box per frame."""
    armature, meshes, motion = _setup_user_scene(spec)
    first, last = motion.range
    start = int(spec["frame_start"]) if spec.get("frame_start") is not None else first
    end = int(spec["frame_end"]) if spec.get("frame_end") is not None else last
    step = max(1, int(spec.get("frame_step", 1)))
    frames = list(range(start, max(start, end) + 1, step))[: int(spec.get("max_frames", 100000))]
    wanted = spec.get("frames") or frames
    per_frame = {}
    for frame in wanted:
        motion.apply(int(frame))
        depsgraph = bpy.context.evaluated_depsgraph_get()
        per_frame[str(frame)] = {"points": {ref: _point(ref, armature, meshes, depsgraph) for ref in spec["points"]},
                                 "bounds": _bounds(meshes, depsgraph)}
    info = {"frames": frames, "clip_range": [first, last], "armature": armature.name,
            "meshes": [o.name for o in meshes], "bones": sorted(b.name for b in armature.data.bones),
            "per_frame": per_frame, "blender_version": bpy.app.version_string}
    with open(os.path.join(out_dir, "probe.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle)


def _set_hdri(path: str, strength: float) -> None:
    if not os.path.isfile(path):
        raise SceneFailure("missing_file", f"no HDRI at {path}")
    world = bpy.data.worlds.new("pose-factory-hdri")
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    env = nodes.new("ShaderNodeTexEnvironment")
    try:
        env.image = bpy.data.images.load(path)
    except RuntimeError as exc:
        raise SceneFailure("unreadable_file", f"Blender cannot read the HDRI {path}: {str(exc).strip()}") from None
    links.new(env.outputs["Color"], nodes["Background"].inputs["Color"])
    nodes["Background"].inputs["Strength"].default_value = strength
    bpy.context.scene.world = world


def _label_objects(meshes: list, labels: list, default: str) -> None:
    """pass_index = 1 + index of the object's class in labels (0 stays for 'nothing hit')."""
    person = set(meshes)
    for obj in bpy.context.scene.objects:
        if obj.type not in ("MESH", "CURVE", "SURFACE", "META", "FONT"):
            continue
        tagged = obj.get("pose_factory_class")
        if obj in person or obj.get("pose_factory_person") or tagged == "person":
            label = "person"
        elif isinstance(tagged, str) and tagged in labels:
            label = tagged
        elif any(word in obj.name.lower() for word in ("floor", "ground")):
            label = "floor"
        else:
            label = default
        obj.pass_index = labels.index(label) + 1


def render_user_scene(spec: dict, out_dir: str) -> None:
    """Render the user's scene: its lights, world and materials, our camera, the passes the contract needs."""
    armature, meshes, motion = _setup_user_scene(spec)
    scene = bpy.context.scene
    if spec.get("hdri"):
        _set_hdri(spec["hdri"], float(spec.get("hdri_strength", 1.0)))
    _label_objects(meshes, spec["labels"], spec["default_class"])
    r = scene.render
    r.engine = "CYCLES"
    device = choose_device(scene, spec.get("device", "auto"))
    scene.cycles.samples = int(spec.get("samples_per_pixel", 8))
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.cycles.filter_width = 0.01
    scene.cycles.seed = int(spec.get("seed", 0))
    r.resolution_x, r.resolution_y = int(spec["width"]), int(spec["height"])
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.use_border = False
    r.film_transparent = False
    r.use_compositing = True
    r.use_sequencer = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.image_settings.color_depth = "8"
    threads = int(spec.get("threads", 0))
    r.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        r.threads = threads
    layer = bpy.context.view_layer
    for other in scene.view_layers:
        other.use = other == layer
    layer.use_pass_z = layer.use_pass_normal = layer.use_pass_object_index = True
    cam_data = bpy.data.cameras.new("pose-factory-camera")
    cam_data.sensor_fit = "AUTO"
    cam_data.clip_start, cam_data.clip_end = 0.01, 10000.0
    camera = bpy.data.objects.new("pose-factory-camera", cam_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    builder = SceneBuilder.__new__(SceneBuilder)  # reuse the compositor and pass reading of the built-in path
    builder.scene = scene
    builder._setup_compositor()
    timings = {}
    for sample in spec["samples"]:
        start = time.perf_counter()
        motion.apply(int(sample["frame"]))
        camera.matrix_world = Matrix(sample["camera"]["matrix_world"])
        cam_data.lens = float(sample["camera"]["lens_mm"])
        cam_data.sensor_width = float(sample["camera"]["sensor_mm"])
        builder.render(os.path.join(out_dir, sample["sample_id"]), frame=int(sample["frame"]))
        timings[sample["sample_id"]] = round(time.perf_counter() - start, 3)
        print(f"pose-factory: rendered {sample['sample_id']} in {timings[sample['sample_id']]:.2f}s", flush=True)
    info = {"blender_version": bpy.app.version_string, "render_engine": "CYCLES", "device": device,
            "samples_per_pixel": scene.cycles.samples, "render_seconds": timings}
    with open(os.path.join(out_dir, "blender.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)


def main() -> None:
    spec_path, out_dir = _args()
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.makedirs(out_dir, exist_ok=True)
    if spec.get("mode") == "probe":
        return probe_user_scene(spec, out_dir)
    if spec.get("mode") == "scene":
        return render_user_scene(spec, out_dir)
    builder = SceneBuilder(spec)
    timings = {}
    for sample in spec["samples"]:
        start = time.perf_counter()
        builder.set_figure(sample["primitives"])
        builder.set_camera(sample["camera"])
        builder.render(os.path.join(out_dir, sample["sample_id"]))
        timings[sample["sample_id"]] = round(time.perf_counter() - start, 3)
        print(f"pose-factory: rendered {sample['sample_id']} in {timings[sample['sample_id']]:.2f}s", flush=True)
    info = {"blender_version": bpy.app.version_string, "render_engine": "CYCLES", "device": builder.device,
            "samples_per_pixel": builder.scene.cycles.samples, "render_seconds": timings}
    with open(os.path.join(out_dir, "blender.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)


if __name__ == "__main__":
    try:
        main()
    except SceneFailure as failure:
        # An expected problem with the user's scene: pose_factory turns error.json into a typed error.
        with open(os.path.join(_args()[1], "error.json"), "w", encoding="utf-8") as handle:
            json.dump({"kind": failure.kind, "message": failure.message, "names": failure.names}, handle)
        print(f"pose-factory: {failure.kind}: {failure.message}", flush=True)
        sys.stdout.flush()
        os._exit(3)
    except BaseException as exc:  # make Blender exit non-zero instead of idling on a Python error
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1 if not isinstance(exc, SystemExit) or exc.code else 0)
    sys.stdout.flush()
    os._exit(0)
