; Rust tags. Earlier patterns win when two capture the same name. An `impl`
; block is a definition (category `impl`, named after its type) so that the
; functions inside it are contained in it as methods.

(impl_item
  body: (declaration_list
    (function_item name: (identifier) @name.definition.method) @definition.method))

(trait_item
  body: (declaration_list
    [
      (function_item name: (identifier) @name.definition.method)
      (function_signature_item name: (identifier) @name.definition.method)
    ] @definition.method))

(function_item name: (identifier) @name.definition.function) @definition.function

(function_signature_item name: (identifier) @name.definition.function) @definition.function

(struct_item name: (type_identifier) @name.definition.struct) @definition.struct

(union_item name: (type_identifier) @name.definition.struct) @definition.struct

(enum_item name: (type_identifier) @name.definition.enum) @definition.enum

(trait_item name: (type_identifier) @name.definition.trait) @definition.trait

(type_item name: (type_identifier) @name.definition.type) @definition.type

(mod_item name: (identifier) @name.definition.module) @definition.module

(macro_definition name: (identifier) @name.definition.macro) @definition.macro

[
  (const_item name: (identifier) @name.definition.constant)
  (static_item name: (identifier) @name.definition.constant)
] @definition.constant

(impl_item
  type: [
    (type_identifier) @name.definition.impl
    (generic_type type: (type_identifier) @name.definition.impl)
    (scoped_type_identifier name: (type_identifier) @name.definition.impl)
  ]) @definition.impl

; references

(call_expression
  function: [
    (identifier) @name.reference.call
    (field_expression field: (field_identifier) @name.reference.call)
    (scoped_identifier name: (identifier) @name.reference.call)
    (scoped_identifier path: (identifier) @name.reference.type)
    (generic_function function: (identifier) @name.reference.call)
    (generic_function function: (scoped_identifier name: (identifier) @name.reference.call))
    (generic_function function: (field_expression field: (field_identifier) @name.reference.call))
  ])

(macro_invocation macro: (identifier) @name.reference.call)

(impl_item trait: (type_identifier) @name.reference.implementation)

(type_identifier) @name.reference.type
