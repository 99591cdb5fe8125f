package passes

// SetForceLayout makes the cost models of mapinline and hotcache take
// layout ("chain", "tree", "probe"; "" for the models' choice) until the
// returned function restores the previous setting. For the external
// layout benchmark only.
func SetForceLayout(layout string) (restore func()) {
	old := forceLayout
	forceLayout = layout
	return func() { forceLayout = old }
}
