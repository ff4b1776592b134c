; C++ tags. Earlier patterns win when two capture the same name: templates
; before the plain declarations they wrap, members before free functions.
; A function's name sits under up to two pointer/reference declarators.

(template_declaration
  [
    (class_specifier name: (type_identifier) @name.definition.class body: (_))
    (struct_specifier name: (type_identifier) @name.definition.struct body: (_))
  ]) @definition.class

(template_declaration
  (function_definition
    declarator: [
      (function_declarator declarator: [(identifier) (field_identifier) (operator_name)] @name.definition.function)
      (function_declarator declarator: (qualified_identifier name: [(identifier) (operator_name) (destructor_name)] @name.definition.method))
      (pointer_declarator declarator: (function_declarator declarator: [(identifier) (field_identifier)] @name.definition.function))
      (reference_declarator (function_declarator declarator: [(identifier) (field_identifier)] @name.definition.function))
    ])) @definition.function

(field_declaration_list
  (function_definition
    declarator: [
      (function_declarator declarator: [(field_identifier) (identifier) (destructor_name) (operator_name)] @name.definition.method)
      (pointer_declarator declarator: (function_declarator declarator: [(field_identifier) (identifier)] @name.definition.method))
      (reference_declarator (function_declarator declarator: [(field_identifier) (identifier)] @name.definition.method))
    ]) @definition.method)

(field_declaration_list
  [
    (field_declaration
      declarator: [
        (function_declarator declarator: [(field_identifier) (identifier) (destructor_name) (operator_name)] @name.definition.method)
        (pointer_declarator declarator: (function_declarator declarator: [(field_identifier) (identifier)] @name.definition.method))
        (reference_declarator (function_declarator declarator: [(field_identifier) (identifier)] @name.definition.method))
      ])
    (declaration
      declarator: (function_declarator declarator: [(identifier) (destructor_name)] @name.definition.method))
  ] @definition.method)

(function_definition
  declarator: [
    (function_declarator declarator: (qualified_identifier name: [(identifier) (operator_name) (destructor_name)] @name.definition.method))
    (function_declarator declarator: (qualified_identifier name: (qualified_identifier name: [(identifier) (operator_name) (destructor_name)] @name.definition.method)))
    (pointer_declarator declarator: (function_declarator declarator: (qualified_identifier name: (identifier) @name.definition.method)))
    (reference_declarator (function_declarator declarator: (qualified_identifier name: (identifier) @name.definition.method)))
  ]) @definition.method

(function_definition
  declarator: [
    (function_declarator declarator: (identifier) @name.definition.function)
    (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function))
    (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function)))
    (reference_declarator (function_declarator declarator: (identifier) @name.definition.function))
  ]) @definition.function

([(translation_unit) (declaration_list)]
  (declaration
    declarator: [
      (function_declarator declarator: (identifier) @name.definition.function)
      (pointer_declarator declarator: (function_declarator declarator: (identifier) @name.definition.function))
      (reference_declarator (function_declarator declarator: (identifier) @name.definition.function))
    ]) @definition.function)

(class_specifier name: (type_identifier) @name.definition.class body: (_)) @definition.class

(struct_specifier name: (type_identifier) @name.definition.struct body: (_)) @definition.struct

(union_specifier name: (type_identifier) @name.definition.struct body: (_)) @definition.struct

(enum_specifier name: (type_identifier) @name.definition.enum body: (_)) @definition.enum

(namespace_definition name: [(namespace_identifier) (nested_namespace_specifier)] @name.definition.module) @definition.module

[
  (type_definition declarator: (type_identifier) @name.definition.type)
  (alias_declaration name: (type_identifier) @name.definition.type)
] @definition.type

[
  (preproc_def name: (identifier) @name.definition.macro)
  (preproc_function_def name: (identifier) @name.definition.macro)
] @definition.macro

; references

(call_expression
  function: [
    (identifier) @name.reference.call
    (field_expression field: (field_identifier) @name.reference.call)
    (qualified_identifier name: (identifier) @name.reference.call)
    (template_function name: (identifier) @name.reference.call)
  ])

(new_expression type: (type_identifier) @name.reference.class)

(base_class_clause (type_identifier) @name.reference.class)

(type_identifier) @name.reference.type
