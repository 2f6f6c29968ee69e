"""Courses: a class working together under its instructors.

A course is declared in the settings file (``[[course]]``). It names an instructors group and a
students group (both from the identity provider), a folder of course material, the datasets
the course uses and its profile (``teaching`` by default). From it medhub makes:

- a JupyterHub role for the instructors: list, read, start and stop the servers of the
  course's students, read the class list, and share their own server (JupyterHub 5 sharing)
  with the class (``medhub share``: with each student, since JupyterHub 5 does not honour a
  share with a whole group when a server checks a token). JupyterHub lets a share name only
  users and groups the sharer may read by name: the course's students;
- teaching servers: a server started with the course's profile mounts the course's datasets
  (those of them the user is granted) and its material, and nothing else the user may read; an
  instructor starts a student's server only as such a server (:func:`check_start_by`), and
  opens only such servers: the role holds no ``access:servers``; a student's teaching server
  is shared with the course's instructors while it runs (the spawners do it);
- read-only course material in the server of every member (``~/courses/<name>``);
- nothing for students beyond JupyterHub's default: a student reaches another's server only
  through a share, and sees only the datasets the catalog grants to the groups they are in.

    [[course]]
    name = "imaging-101"
    instructors = "imaging-101-teachers"
    students = "imaging-101-students"
    materials = "/srv/courses/imaging-101"
    datasets = ["teaching-ct"]
    profile = "teaching"      # the profile of its teaching servers (the default)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado import web

from .catalog import Dataset
from .errors import HubConfigError
from .tomlfile import Section

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Course:
    name: str
    instructors: str
    students: str
    materials: Path | None = None
    datasets: tuple[str, ...] = ()
    profile: str = "teaching"  # servers started with this profile are the course's teaching servers

    @property
    def groups(self) -> tuple[str, str]:
        return self.instructors, self.students

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "instructors": self.instructors, "students": self.students,
                "materials": str(self.materials) if self.materials else None, "datasets": list(self.datasets),
                "profile": self.profile}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Course:
        return cls(d["name"], d["instructors"], d["students"], Path(d["materials"]) if d.get("materials") else None,
                   tuple(d.get("datasets", ())), d.get("profile", cls.profile))


def parse_courses(raw: Any, source: Path, datasets: tuple[Dataset, ...], profiles: tuple[str, ...]) -> tuple[Course, ...]:
    """The ``[[course]]`` tables of the settings file, validated against the catalog and the
    profiles: a course's datasets must exist and be granted to its students group, its profile
    must be one of ``profiles``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise HubConfigError(f"{source}: [[course]] must be an array of tables")
    by_id = {d.id: d for d in datasets}
    courses = []
    for i, item in enumerate(raw):
        s = Section(item, f"course[{i}]", source)
        course = Course(
            name=s.get("name", str),
            instructors=s.get("instructors", str),
            students=s.get("students", str),
            materials=s.path("materials", Path(".")) if "materials" in s.data else None,
            datasets=s.strings("datasets"),
            profile=s.get("profile", str, Course.profile),
        )
        if not NAME.match(course.name):
            raise s.error("name", f"{course.name!r} is not a slug (lower-case letters, digits, '-')")
        if course.instructors == course.students:
            raise s.error("students", "must be a different group from instructors")
        if course.profile not in profiles:
            raise s.error("profile", f"{course.profile!r} is not a profile; choose one of {', '.join(profiles)}")
        if course.materials is not None and not course.materials.is_dir():
            raise s.error("materials", f"{course.materials} is not a folder")
        for dataset in course.datasets:
            if dataset not in by_id:
                raise s.error("datasets", f"{dataset!r} is not in the dataset catalog (hub.catalog)")
            if course.students not in by_id[dataset].groups:
                raise s.error("datasets", f"the catalog does not grant {dataset!r} to {course.students!r}; "
                                          "add the group to that dataset's groups")
        s.done()
        courses.append(course)
    names = [c.name for c in courses]
    if len(set(names)) != len(names):
        raise HubConfigError(f"{source}: [[course]] names must be unique, got {names}")
    return tuple(courses)


def instructor_role(course: Course) -> dict[str, Any]:
    """The JupyterHub role of a course's instructors."""
    students = f"group={course.students}"
    return {
        "name": f"course-{course.name}-instructors",
        "description": f"Instructors of {course.name}: their students' teaching servers, and sharing their own",
        "scopes": [f"list:users!{students}", f"read:users!{students}", f"read:servers!{students}",
                   f"servers!{students}", f"read:groups!{students}", "shares!user"],
        "groups": [course.instructors],
    }


def courses_of(courses: tuple[Course, ...], groups: list[str]) -> tuple[Course, ...]:
    """The courses a member of ``groups`` takes or teaches."""
    return tuple(c for c in courses if set(c.groups) & set(groups))


def materials_for(courses: tuple[Course, ...]) -> dict[str, Path]:
    """Course name → material folder, for ``courses``."""
    return {c.name: c.materials for c in courses if c.materials}


def check_start_by(courses: tuple[Course, ...], requester: Any, owner: str, owner_groups: list[str],
                   profile: str) -> None:
    """Refuse (HTTP 403, saying why) a server started for ``owner`` by another user who is no
    admin (an instructor) unless it is a teaching server of a course that user teaches and the
    owner takes: an instructor's power over a student's server stops at the course."""
    name, admin = getattr(requester, "name", None), getattr(requester, "admin", False)
    if getattr(requester, "kind", None) != "user" or name == owner or admin:
        return
    teaching = set(g.name for g in requester.groups)
    taught = [c for c in courses if c.instructors in teaching and c.students in owner_groups]
    if not any(c.profile == profile for c in taught):
        offered = ", ".join(sorted({c.profile for c in taught})) or "none"
        raise web.HTTPError(403, f"{name} may start {owner}'s server only as a teaching server of a course they "
                                 f"teach (profile: {offered}), not with profile {profile!r}")
