/* SPDX-License-Identifier: MPL-2.0 */
/* gst_memory_map + gst_memory_unmap of AlignedMemory next to SystemMemory, with the plugin
 * loaded as users load it (a shared object found through GST_PLUGIN_PATH), in one process.
 * `cargo bench` links memkit statically into the benchmark, which makes its thread-local
 * state cheaper to reach than in the plugin; this measures the plugin.
 *
 *   meson compile -C builddir bench_map
 *   GST_PLUGIN_PATH=builddir builddir/bench_map [-n ITERS] [-r REPEATS] [-C NAME:SIZE:FLAGS]
 *
 * Prints, per size and map mode, the median ns per map+unmap of each allocator over REPEATS
 * repeats (alternating which goes first) and the median of the per-repeat ratios
 * (memkit / system: below 1 is faster). `-C AlignedMemory:4096:rw` runs one configuration
 * only, inside `counted_run`, for `valgrind --tool=callgrind --toggle-collect=counted_run`. */

#include <gst/gst.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Not inlined, so that callgrind can count exactly the loop. */
__attribute__((noinline)) static void
counted_run (GstMemory * mem, GstMapFlags flags, long n)
{
  GstMapInfo info;
  for (long i = 0; i < n; i++) {
    if (!gst_memory_map (mem, &info, flags))
      g_error ("map failed");
    /* The mapped pointer is used, as a caller would. */
    __asm__ volatile ("":: "r" (info.data):"memory");
    gst_memory_unmap (mem, &info);
  }
}

static double
ns_per_op (GstMemory * mem, GstMapFlags flags, long n)
{
  double t0 = now_ns ();
  counted_run (mem, flags, n);
  return (now_ns () - t0) / n;
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

static double
median (double *v, int n)
{
  qsort (v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static GstAllocator *
find (const char *name)
{
  GstAllocator *a = gst_allocator_find (strcmp (name, "SystemMemory") ? name : NULL);
  if (!a)
    g_error ("no allocator %s (is GST_PLUGIN_PATH set to the build directory?)", name);
  return a;
}

static GstMapFlags
parse_flags (const char *s)
{
  if (!strcmp (s, "r"))
    return GST_MAP_READ;
  if (!strcmp (s, "w"))
    return GST_MAP_WRITE;
  if (!strcmp (s, "rw"))
    return GST_MAP_READWRITE;
  g_error ("flags must be r, w or rw, not %s", s);
}

int
main (int argc, char **argv)
{
  long n = 1000000;
  int repeats = 9;
  const char *one = NULL;
  static const gsize sizes[] = { 64, 4096, 1 << 20 };
  static const struct
  {
    const char *name;
    GstMapFlags flags;
  } modes[] = {
    {"READ", GST_MAP_READ}, {"READWRITE", GST_MAP_READWRITE},
  };

  for (int i = 1; i < argc; i++) {
    if (!strcmp (argv[i], "-n") && i + 1 < argc)
      n = atol (argv[++i]);
    else if (!strcmp (argv[i], "-r") && i + 1 < argc)
      repeats = atoi (argv[++i]);
    else if (!strcmp (argv[i], "-C") && i + 1 < argc)
      one = argv[++i];
    else {
      fprintf (stderr, "usage: %s [-n ITERS] [-r REPEATS] [-C NAME:SIZE:r|w|rw]\n", argv[0]);
      return 2;
    }
  }
  if (n < 1 || repeats < 1 || repeats > 99) {
    fprintf (stderr, "ITERS must be at least 1, REPEATS 1 to 99\n");
    return 2;
  }

  gst_init (&argc, &argv);
  /* Load the plugin so that its allocators are registered. */
  GstPlugin *plugin = gst_plugin_load_by_name ("memkit");
  if (!plugin)
    g_error ("the memkit plugin is not found: set GST_PLUGIN_PATH to the build directory");
  gst_object_unref (plugin);

  if (one) {
    gchar **f = g_strsplit (one, ":", 3);
    if (g_strv_length (f) != 3)
      g_error ("-C wants NAME:SIZE:FLAGS");
    GstAllocator *a = find (f[0]);
    GstMemory *mem = gst_allocator_alloc (a, g_ascii_strtoull (f[1], NULL, 10), NULL);
    counted_run (mem, parse_flags (f[2]), n);
    gst_memory_unref (mem);
    gst_object_unref (a);
    g_strfreev (f);
    return 0;
  }

  GstAllocator *ours = find ("AlignedMemory"), *sys = find ("SystemMemory");
  printf ("%-30s %10s %10s %8s\n", "map+unmap (ns/op)", "memkit", "system", "ratio");
  for (size_t s = 0; s < G_N_ELEMENTS (sizes); s++) {
    for (size_t m = 0; m < G_N_ELEMENTS (modes); m++) {
      GstMemory *a = gst_allocator_alloc (ours, sizes[s], NULL);
      GstMemory *b = gst_allocator_alloc (sys, sizes[s], NULL);
      double ta[99], tb[99], ratio[99];
      /* Warm up both. */
      ns_per_op (a, modes[m].flags, n / 10 + 1);
      ns_per_op (b, modes[m].flags, n / 10 + 1);
      for (int r = 0; r < repeats; r++) {
        if (r % 2) {
          tb[r] = ns_per_op (b, modes[m].flags, n);
          ta[r] = ns_per_op (a, modes[m].flags, n);
        } else {
          ta[r] = ns_per_op (a, modes[m].flags, n);
          tb[r] = ns_per_op (b, modes[m].flags, n);
        }
        ratio[r] = ta[r] / tb[r];
      }
      gchar *label = g_strdup_printf ("%s %" G_GSIZE_FORMAT " B", modes[m].name, sizes[s]);
      printf ("%-30s %10.2f %10.2f %8.3f\n", label, median (ta, repeats),
          median (tb, repeats), median (ratio, repeats));
      g_free (label);
      gst_memory_unref (a);
      gst_memory_unref (b);
    }
  }
  gst_object_unref (ours);
  gst_object_unref (sys);
  return 0;
}
