"""Runs INSIDE Blender: builds the test character for tests/test_blender_scene.py and saves it.

    blender -b --factory-startup -P tests/blender/make_character.py -- OUT_DIR

Writes OUT_DIR/character.blend (Rigify's human meta-rig skinned rigidly to one mesh of cylinders and a head
sphere, a floor, a "table" box tagged with the custom property pose_factory_class, a sun, an action "Raise"
on the rig) and OUT_DIR/motion.bvh (three frames: rest, left arm raised 40 degrees, right knee bent 60
degrees; joints named like the meta-rig's bones so the motion retargets by name), plus OUT_DIR/rest.json
with the rest head of every bone for the test's own expectations.
"""

import json
import math
import os
import sys

import addon_utils
import bmesh
import bpy
from mathutils import Matrix, Vector

OUT = sys.argv[sys.argv.index("--") + 1]
BODY = {  # bone -> radius of its cylinder
    "spine": 0.13, "spine.001": 0.12, "spine.002": 0.13, "spine.003": 0.14, "spine.004": 0.05, "spine.005": 0.05,
    "upper_arm.L": 0.045, "forearm.L": 0.04, "hand.L": 0.035, "upper_arm.R": 0.045, "forearm.R": 0.04,
    "hand.R": 0.035, "thigh.L": 0.07, "shin.L": 0.055, "foot.L": 0.045, "thigh.R": 0.07, "shin.R": 0.055,
    "foot.R": 0.045, "shoulder.L": 0.05, "shoulder.R": 0.05,
}
BVH_TREE = [  # (joint, parent)
    ("spine", None), ("spine.001", "spine"), ("spine.002", "spine.001"), ("spine.003", "spine.002"),
    ("spine.004", "spine.003"), ("spine.005", "spine.004"), ("spine.006", "spine.005"),
    ("shoulder.L", "spine.003"), ("upper_arm.L", "shoulder.L"), ("forearm.L", "upper_arm.L"), ("hand.L", "forearm.L"),
    ("shoulder.R", "spine.003"), ("upper_arm.R", "shoulder.R"), ("forearm.R", "upper_arm.R"), ("hand.R", "forearm.R"),
    ("thigh.L", "spine"), ("shin.L", "thigh.L"), ("foot.L", "shin.L"),
    ("thigh.R", "spine"), ("shin.R", "thigh.R"), ("foot.R", "shin.R"),
]
MOTION = {2: ("upper_arm.L", "Z", 40.0), 3: ("shin.R", "X", 60.0)}  # frame -> (joint, BVH axis, degrees)


def build() -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    rig = bpy.context.object
    rig.name = "metarig"
    bones = rig.data.bones
    bm = bmesh.new()
    groups = []
    for name, radius in BODY.items():
        bone = bones[name]
        head, tail = bone.head_local, bone.tail_local
        axis = tail - head
        piece = bmesh.new()
        bmesh.ops.create_cone(piece, cap_ends=True, segments=12, radius1=radius, radius2=radius * 0.85,
                              depth=axis.length)
        rot = axis.to_track_quat("Z", "Y").to_matrix().to_4x4()
        bmesh.ops.transform(piece, matrix=Matrix.Translation((head + tail) / 2) @ rot, verts=piece.verts)
        groups.append((name, len(bm.verts), len(piece.verts)))
        mesh = bpy.data.meshes.new("tmp")
        piece.to_mesh(mesh)
        piece.free()
        bm.from_mesh(mesh)
        bpy.data.meshes.remove(mesh)
    head = bmesh.new()
    bmesh.ops.create_uvsphere(head, u_segments=16, v_segments=10, radius=0.11)
    centre = (bones["spine.006"].head_local + bones["spine.006"].tail_local) / 2 + Vector((0, -0.03, -0.03))
    bmesh.ops.translate(head, vec=centre, verts=head.verts)
    groups.append(("spine.006", len(bm.verts), len(head.verts)))
    mesh = bpy.data.meshes.new("tmp")
    head.to_mesh(mesh)
    head.free()
    bm.from_mesh(mesh)
    bpy.data.meshes.remove(mesh)
    body_mesh = bpy.data.meshes.new("Body")
    bm.to_mesh(body_mesh)
    bm.free()
    body = bpy.data.objects.new("Body", body_mesh)
    bpy.context.scene.collection.objects.link(body)
    for name, start, count in groups:
        group = body.vertex_groups.new(name=name)
        group.add(list(range(start, start + count)), 1.0, "REPLACE")
    modifier = body.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    body.parent = rig

    bpy.ops.mesh.primitive_plane_add(size=6.0)
    bpy.context.object.name = "Floor"
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(0.0, 1.2, 0.25))
    bpy.context.object.name = "Box"
    bpy.context.object["pose_factory_class"] = "table"
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (math.radians(40), 0.0, math.radians(30))
    bpy.context.scene.collection.objects.link(sun)

    action = bpy.data.actions.new("Raise")
    action.use_fake_user = True  # kept in the file although no object uses it until a job picks it
    rig.animation_data_create()
    rig.animation_data.action = action
    pb = rig.pose.bones["upper_arm.L"]
    pb.rotation_mode = "XYZ"
    for frame, angle in ((1, 0.0), (5, 50.0)):
        pb.rotation_euler = (0.0, 0.0, math.radians(angle))
        pb.keyframe_insert("rotation_euler", frame=frame)
    rig.animation_data.action = None  # the job chooses it with poses.action

    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(OUT, "character.blend"))
    rest = {b.name: list(rig.matrix_world @ b.head_local) for b in bones}
    rest.update({b.name + ":tail": list(rig.matrix_world @ b.tail_local) for b in bones})
    with open(os.path.join(OUT, "rest.json"), "w") as handle:
        json.dump(rest, handle)
    write_bvh(rest, os.path.join(OUT, "motion.bvh"))


def to_bvh(p) -> tuple:
    """Blender (x, y, z), Z up -> BVH (x, z, -y), Y up (what the importer's default axes undo)."""
    return p[0], p[2], -p[1]


def write_bvh(rest: dict, path: str) -> None:
    children = {}
    for joint, parent in BVH_TREE:
        children.setdefault(parent, []).append(joint)
    lines, order = ["HIERARCHY"], []

    def emit(joint, parent, depth):
        pad = "  " * depth
        here = to_bvh(rest[joint])
        offset = here if parent is None else tuple(a - b for a, b in zip(here, to_bvh(rest[parent])))
        lines.append(f"{pad}{'ROOT' if parent is None else 'JOINT'} {joint}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        channels = "Xposition Yposition Zposition Zrotation Xrotation Yrotation" if parent is None \
            else "Zrotation Xrotation Yrotation"
        lines.append(f"{pad}  CHANNELS {len(channels.split())} {channels}")
        order.append(joint)
        for child in children.get(joint, []):
            emit(child, joint, depth + 1)
        if joint not in children:
            tail = tuple(a - b for a, b in zip(to_bvh(rest[joint + ":tail"]), here))
            lines.append(f"{pad}  End Site")
            lines.append(pad + "  {")
            lines.append(f"{pad}    OFFSET {tail[0]:.6f} {tail[1]:.6f} {tail[2]:.6f}")
            lines.append(pad + "  }")
        lines.append(pad + "}")

    emit("spine", None, 0)
    lines += ["MOTION", "Frames: 3", "Frame Time: 0.041667"]
    for frame in (1, 2, 3):
        values = []
        for joint in order:
            rot = {"X": 0.0, "Y": 0.0, "Z": 0.0}
            if frame in MOTION and MOTION[frame][0] == joint:
                rot[MOTION[frame][1]] = MOTION[frame][2]
            if joint == "spine":
                values += list(to_bvh(rest["spine"]))
            values += [rot["Z"], rot["X"], rot["Y"]]
        lines.append(" ".join(f"{v:.6f}" for v in values))
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


build()
sys.stdout.flush()
os._exit(0)
