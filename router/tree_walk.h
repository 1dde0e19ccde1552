// Internal: a generic walk over libpg_query's protobuf-c tree.
//
// Every node type is a protobuf-c message; its descriptor lists its fields,
// so one function visits the children of any node without a case per type.

#ifndef SHARDKIT_ROUTER_TREE_WALK_H_
#define SHARDKIT_ROUTER_TREE_WALK_H_

#include <protobuf-c/protobuf-c.h>

#include <cstdint>

namespace shardkit::internal {

// Calls fn(child) for every message-typed field of `message` that is set
// (each element of a repeated field; only the active member of a oneof).
template <typename Message, typename Fn>
void ForEachChild(Message* message, Fn&& fn) {
  const ProtobufCMessageDescriptor* d = message->descriptor;
  auto* base = reinterpret_cast<char*>(const_cast<ProtobufCMessage*>(message));
  for (unsigned i = 0; i < d->n_fields; ++i) {
    const ProtobufCFieldDescriptor& f = d->fields[i];
    if (f.type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (f.label == PROTOBUF_C_LABEL_REPEATED) {
      const size_t n = *reinterpret_cast<size_t*>(base + f.quantifier_offset);
      auto** items = *reinterpret_cast<ProtobufCMessage***>(base + f.offset);
      for (size_t k = 0; k < n; ++k) {
        if (items[k] != nullptr) fn(static_cast<Message*>(items[k]));
      }
      continue;
    }
    if (f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      const uint32_t active = *reinterpret_cast<uint32_t*>(base + f.quantifier_offset);
      if (active != f.id) continue;
    }
    auto* child = *reinterpret_cast<ProtobufCMessage**>(base + f.offset);
    if (child != nullptr) fn(static_cast<Message*>(child));
  }
}

// Whether `m` is a message of type `d` (e.g. pg_query__range_var__descriptor).
inline bool IsMessage(const ProtobufCMessage* m,
                      const ProtobufCMessageDescriptor& d) {
  return m->descriptor == &d;
}

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_TREE_WALK_H_
