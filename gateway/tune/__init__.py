"""gateway tune: precision x serving configuration search with an accuracy guard."""
