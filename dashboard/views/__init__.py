"""The dashboard's pages, a Flask blueprint each: signing in, segments, uploads, profiles."""
from listseg.dashboard.views import auth, profiles, segments, uploads

BLUEPRINTS = (auth.bp, segments.bp, uploads.bp, profiles.bp)
