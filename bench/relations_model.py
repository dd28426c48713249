"""The collections bench/relations.py serves: projects and their tasks."""

from __future__ import annotations

from tidings import Many, Ref, collection, many, ref


@collection
class Project:
    name: str
    tasks: Many[Task] = many(via="project")


@collection
class Task:
    title: str
    status: str = "open"
    project: Ref[Project] | None = ref(on_delete="cascade")


COLLECTIONS = [Project, Task]
