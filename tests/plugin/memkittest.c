/* SPDX-License-Identifier: MPL-2.0
 *
 * memkittest: elements that misbehave on purpose, for memkit's guard-mode and tracer tests.
 * Built by meson for the test suites only; never installed, never part of the memkit plugin.
 *
 *   memkitscribble damage=past-maxsize|prefix|none  writes one byte past the memory's maxsize
 *                                                    or into its prefix, like a buggy element;
 *                  damage=write-read-mapped          writes through a GST_MAP_READ mapping;
 *                  damage=after-unmap                writes through a pointer after its unmap;
 *                  damage=read-after-unmap           reads through a pointer after its unmap;
 *                  damage=before-payload             writes the byte just before the payload
 *                                                    (under a WRITE mapping);
 *                  damage=after-free                 reads the previous buffer's bytes after
 *                                                    it was freed (run with a sink that keeps
 *                                                    no last sample)
 *   memkitleak                                       keeps a reference on the first buffer for
 *                                                    ever (a deliberate leak)
 *   memkitcopy                                       replaces every memory of each buffer by a
 *                                                    gst_memory_copy of it (an element that is
 *                                                    not zero-copy)
 */
#include <gst/gst.h>
#include <gst/base/gstbasetransform.h>

/* ---------------------------------------------------------------- memkitscribble */

typedef enum
{
  DAMAGE_NONE,
  DAMAGE_PAST_MAXSIZE,
  DAMAGE_PREFIX,
  DAMAGE_WRITE_READ_MAPPED,
  DAMAGE_AFTER_UNMAP,
  DAMAGE_AFTER_FREE,
  DAMAGE_READ_AFTER_UNMAP,
  DAMAGE_BEFORE_PAYLOAD,
} Damage;

#define TYPE_DAMAGE (damage_get_type ())
static GType
damage_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {DAMAGE_NONE, "Write nothing", "none"},
    {DAMAGE_PAST_MAXSIZE, "Write one byte past maxsize", "past-maxsize"},
    {DAMAGE_PREFIX, "Write the last byte of the prefix", "prefix"},
    {DAMAGE_WRITE_READ_MAPPED, "Write through a READ mapping", "write-read-mapped"},
    {DAMAGE_AFTER_UNMAP, "Write after unmapping", "after-unmap"},
    {DAMAGE_AFTER_FREE, "Read the previous buffer after it was freed", "after-free"},
    {DAMAGE_READ_AFTER_UNMAP, "Read after unmapping", "read-after-unmap"},
    {DAMAGE_BEFORE_PAYLOAD, "Write the byte before the payload", "before-payload"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("MemkitTestDamage", values));
  return type;
}

typedef struct
{
  GstBaseTransform parent;
  Damage damage;
  /* after-free: the first payload byte of the previous buffer */
  volatile guint8 *previous;
} MemkitScribble;

typedef struct
{
  GstBaseTransformClass parent_class;
} MemkitScribbleClass;

G_DEFINE_TYPE (MemkitScribble, memkit_scribble, GST_TYPE_BASE_TRANSFORM);

static GstStaticPadTemplate any_src = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS_ANY);
static GstStaticPadTemplate any_sink = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS_ANY);

enum
{
  PROP_0,
  PROP_DAMAGE,
};

static void
memkit_scribble_set_property (GObject * object, guint id, const GValue * value,
    GParamSpec * pspec)
{
  MemkitScribble *self = (MemkitScribble *) object;
  if (id == PROP_DAMAGE)
    self->damage = g_value_get_enum (value);
  else
    G_OBJECT_WARN_INVALID_PROPERTY_ID (object, id, pspec);
}

static void
memkit_scribble_get_property (GObject * object, guint id, GValue * value,
    GParamSpec * pspec)
{
  MemkitScribble *self = (MemkitScribble *) object;
  if (id == PROP_DAMAGE)
    g_value_set_enum (value, self->damage);
  else
    G_OBJECT_WARN_INVALID_PROPERTY_ID (object, id, pspec);
}

static GstFlowReturn
memkit_scribble_transform_ip (GstBaseTransform * trans, GstBuffer * buf)
{
  MemkitScribble *self = (MemkitScribble *) trans;
  GstMemory *mem;
  GstMapInfo info;

  if (self->damage == DAMAGE_NONE || gst_buffer_n_memory (buf) == 0)
    return GST_FLOW_OK;
  mem = gst_buffer_peek_memory (buf, 0);
  switch (self->damage) {
    case DAMAGE_WRITE_READ_MAPPED:
      if (!gst_memory_map (mem, &info, GST_MAP_READ))
        return GST_FLOW_ERROR;
      ((volatile guint8 *) info.data)[0] = 0x5a;
      gst_memory_unmap (mem, &info);
      return GST_FLOW_OK;
    case DAMAGE_AFTER_UNMAP:{
      volatile guint8 *data;
      if (!gst_memory_map (mem, &info, GST_MAP_READWRITE))
        return GST_FLOW_ERROR;
      /* kept before the unmap, which may clear the GstMapInfo (GStreamer 1.26+) */
      data = info.data;
      gst_memory_unmap (mem, &info);
      data[0] = 0x5a;
      return GST_FLOW_OK;
    }
    case DAMAGE_READ_AFTER_UNMAP:{
      volatile guint8 *data;
      if (!gst_memory_map (mem, &info, GST_MAP_READ))
        return GST_FLOW_ERROR;
      data = info.data;
      gst_memory_unmap (mem, &info);
      if (data[0] == 0x77)
        GST_DEBUG_OBJECT (self, "read an unmapped byte");
      return GST_FLOW_OK;
    }
    case DAMAGE_BEFORE_PAYLOAD:
      if (!gst_memory_map (mem, &info, GST_MAP_READWRITE))
        return GST_FLOW_ERROR;
      ((volatile guint8 *) info.data)[-1] = 0x5a;
      gst_memory_unmap (mem, &info);
      return GST_FLOW_OK;
    case DAMAGE_AFTER_FREE:
      if (self->previous != NULL && self->previous[0] == 0x77)
        GST_DEBUG_OBJECT (self, "read a freed byte");
      if (!gst_memory_map (mem, &info, GST_MAP_READ))
        return GST_FLOW_ERROR;
      self->previous = info.data;
      gst_memory_unmap (mem, &info);
      return GST_FLOW_OK;
    default:
      break;
  }
  if (!gst_memory_map (mem, &info, GST_MAP_READWRITE))
    return GST_FLOW_ERROR;
  /* info.data is region + offset: the region ends at info.data - offset + maxsize */
  if (self->damage == DAMAGE_PAST_MAXSIZE)
    info.data[mem->maxsize - mem->offset] ^= 0x5a;
  else if (mem->offset > 0)
    info.data[-1] ^= 0x5a;
  gst_memory_unmap (mem, &info);
  return GST_FLOW_OK;
}

static void
memkit_scribble_class_init (MemkitScribbleClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);

  gobject_class->set_property = memkit_scribble_set_property;
  gobject_class->get_property = memkit_scribble_get_property;
  g_object_class_install_property (gobject_class, PROP_DAMAGE,
      g_param_spec_enum ("damage", "Damage", "What to write outside the payload",
          TYPE_DAMAGE, DAMAGE_NONE, G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS));
  gst_element_class_add_static_pad_template (element_class, &any_src);
  gst_element_class_add_static_pad_template (element_class, &any_sink);
  gst_element_class_set_static_metadata (element_class, "memkit test scribbler",
      "Filter", "Writes outside the payload on purpose (memkit tests only)",
      "memkit developers");
  trans_class->transform_ip = memkit_scribble_transform_ip;
}

static void
memkit_scribble_init (MemkitScribble * self)
{
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
}

/* ---------------------------------------------------------------- memkitleak */

typedef struct
{
  GstBaseTransform parent;
} MemkitLeak;

typedef struct
{
  GstBaseTransformClass parent_class;
} MemkitLeakClass;

G_DEFINE_TYPE (MemkitLeak, memkit_leak, GST_TYPE_BASE_TRANSFORM);

/* The leaked buffer: referenced once, never released. */
static GstBuffer *leaked = NULL;

static GstFlowReturn
memkit_leak_transform_ip (GstBaseTransform * trans, GstBuffer * buf)
{
  if (leaked == NULL)
    leaked = gst_buffer_ref (buf);
  return GST_FLOW_OK;
}

static void
memkit_leak_class_init (MemkitLeakClass * klass)
{
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);

  gst_element_class_add_static_pad_template (element_class, &any_src);
  gst_element_class_add_static_pad_template (element_class, &any_sink);
  gst_element_class_set_static_metadata (element_class, "memkit test leaker",
      "Filter", "Keeps a reference on the first buffer for ever (memkit tests only)",
      "memkit developers");
  trans_class->transform_ip = memkit_leak_transform_ip;
  trans_class->passthrough_on_same_caps = TRUE;
}

static void
memkit_leak_init (MemkitLeak * self)
{
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
  gst_base_transform_set_passthrough (GST_BASE_TRANSFORM (self), TRUE);
}

/* ---------------------------------------------------------------- memkitcopy */

typedef struct
{
  GstBaseTransform parent;
} MemkitCopy;

typedef struct
{
  GstBaseTransformClass parent_class;
} MemkitCopyClass;

G_DEFINE_TYPE (MemkitCopy, memkit_copy, GST_TYPE_BASE_TRANSFORM);

static GstFlowReturn
memkit_copy_transform_ip (G_GNUC_UNUSED GstBaseTransform * trans, GstBuffer * buf)
{
  guint i, n = gst_buffer_n_memory (buf);

  for (i = 0; i < n; i++) {
    GstMemory *copy = gst_memory_copy (gst_buffer_peek_memory (buf, i), 0, -1);
    if (copy == NULL)
      return GST_FLOW_ERROR;
    gst_buffer_replace_memory (buf, i, copy);
  }
  return GST_FLOW_OK;
}

static void
memkit_copy_class_init (MemkitCopyClass * klass)
{
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);

  gst_element_class_add_static_pad_template (element_class, &any_src);
  gst_element_class_add_static_pad_template (element_class, &any_sink);
  gst_element_class_set_static_metadata (element_class, "memkit test copier",
      "Filter", "Copies every memory of every buffer (memkit tests only)",
      "memkit developers");
  trans_class->transform_ip = memkit_copy_transform_ip;
}

static void
memkit_copy_init (MemkitCopy * self)
{
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
}

static gboolean
plugin_init (GstPlugin * plugin)
{
  return gst_element_register (plugin, "memkitscribble", GST_RANK_NONE,
      memkit_scribble_get_type ())
      && gst_element_register (plugin, "memkitleak", GST_RANK_NONE,
      memkit_leak_get_type ())
      && gst_element_register (plugin, "memkitcopy", GST_RANK_NONE,
      memkit_copy_get_type ());
}

#define PACKAGE "memkittest"
GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, memkittest,
    "memkit test-only elements", plugin_init, "0.1", "MPL", "memkit",
    "https://example.invalid/memkit")
