; Go tags. Earlier patterns win when two capture the same name: a declaration
; holding a single spec is the definition; in a grouped `type (...)` or
; `const (...)` each spec is its own definition.

(function_declaration name: (identifier) @name.definition.function) @definition.function

(method_declaration name: (field_identifier) @name.definition.method) @definition.method

(type_declaration
  .
  (type_spec name: (type_identifier) @name.definition.struct type: (struct_type))
  .) @definition.struct

(type_declaration
  .
  (type_spec name: (type_identifier) @name.definition.interface type: (interface_type))
  .) @definition.interface

(type_declaration
  .
  [
    (type_spec name: (type_identifier) @name.definition.type)
    (type_alias name: (type_identifier) @name.definition.type)
  ]
  .) @definition.type

(type_spec name: (type_identifier) @name.definition.struct type: (struct_type)) @definition.struct

(type_spec name: (type_identifier) @name.definition.interface type: (interface_type)) @definition.interface

[
  (type_spec name: (type_identifier) @name.definition.type)
  (type_alias name: (type_identifier) @name.definition.type)
] @definition.type

(method_elem name: (field_identifier) @name.definition.method) @definition.method

(source_file
  (const_declaration
    .
    (const_spec name: (identifier) @name.definition.constant)
    .) @definition.constant)

(source_file
  (const_declaration
    (const_spec name: (identifier) @name.definition.constant) @definition.constant))

(source_file
  (var_declaration
    .
    (var_spec name: (identifier) @name.definition.constant)
    .) @definition.constant)

(source_file
  (var_declaration
    (var_spec name: (identifier) @name.definition.constant) @definition.constant))

; references

(call_expression
  function: [
    (identifier) @name.reference.call
    (parenthesized_expression (identifier) @name.reference.call)
    (selector_expression field: (field_identifier) @name.reference.call)
    (parenthesized_expression (selector_expression field: (field_identifier) @name.reference.call))
  ])

(composite_literal
  type: (qualified_type name: (type_identifier) @name.reference.class))

(type_identifier) @name.reference.type
