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

from pathlib import Path
from typing import Any

from tornado import web

from .settings import Course


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
