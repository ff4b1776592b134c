; C tags. Earlier patterns win when two capture the same name. A function's
; name sits under up to two pointer declarators (`char **f(void)`).

(function_definition
  declarator: [
    (function_declarator declarator: (identifier) @name.definition.function)
    (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function))
    (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function)))
  ]) @definition.function

(translation_unit
  (declaration
    declarator: [
      (function_declarator declarator: (identifier) @name.definition.function)
      (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function))
      (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function)))
    ]) @definition.function)

(struct_specifier name: (type_identifier) @name.definition.struct body: (_)) @definition.struct

(union_specifier name: (type_identifier) @name.definition.struct body: (_)) @definition.struct

(enum_specifier name: (type_identifier) @name.definition.enum body: (_)) @definition.enum

(type_definition declarator: (type_identifier) @name.definition.type) @definition.type

[
  (preproc_def name: (identifier) @name.definition.macro)
  (preproc_function_def name: (identifier) @name.definition.macro)
] @definition.macro

; references

(call_expression
  function: [
    (identifier) @name.reference.call
    (field_expression field: (field_identifier) @name.reference.call)
  ])

(type_identifier) @name.reference.type
