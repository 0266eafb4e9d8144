"""Views: one function per thing a user looks at, a subject and options in, a typed result out.

Each result records the defaults it resolved; the CLI, the report and the web app encode them.
(This file is a placeholder from helper "serve" for :mod:`convlens.views.unit`; helper "views" owns
the package.)
"""
