; Java tags. Earlier patterns win when two capture the same name.

[
  (method_declaration name: (identifier) @name.definition.method)
  (constructor_declaration name: (identifier) @name.definition.method)
] @definition.method

[
  (class_declaration name: (identifier) @name.definition.class)
  (record_declaration name: (identifier) @name.definition.class)
] @definition.class

[
  (interface_declaration name: (identifier) @name.definition.interface)
  (annotation_type_declaration name: (identifier) @name.definition.interface)
] @definition.interface

(enum_declaration name: (identifier) @name.definition.enum) @definition.enum

; references

(method_invocation name: (identifier) @name.reference.call)

(object_creation_expression type: (type_identifier) @name.reference.class)

(superclass (type_identifier) @name.reference.class)

(super_interfaces (type_list (type_identifier) @name.reference.implementation))

(type_identifier) @name.reference.type
