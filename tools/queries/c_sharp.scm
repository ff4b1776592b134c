; C# tags. Earlier patterns win when two capture the same name.

[
  (method_declaration name: (identifier) @name.definition.method)
  (constructor_declaration name: (identifier) @name.definition.method)
  (destructor_declaration name: (identifier) @name.definition.method)
] @definition.method

[
  (class_declaration name: (identifier) @name.definition.class)
  (record_declaration name: (identifier) @name.definition.class)
] @definition.class

(struct_declaration name: (identifier) @name.definition.struct) @definition.struct

(interface_declaration name: (identifier) @name.definition.interface) @definition.interface

(enum_declaration name: (identifier) @name.definition.enum) @definition.enum

(delegate_declaration name: (identifier) @name.definition.type) @definition.type

[
  (namespace_declaration name: [(identifier) (qualified_name)] @name.definition.module)
  (file_scoped_namespace_declaration name: [(identifier) (qualified_name)] @name.definition.module)
] @definition.module

(property_declaration name: (identifier) @name.definition.property) @definition.property

; references

(invocation_expression
  function: [
    (identifier) @name.reference.call
    (member_access_expression name: (identifier) @name.reference.call)
    (generic_name (identifier) @name.reference.call)
    (member_access_expression name: (generic_name (identifier) @name.reference.call))
  ])

(object_creation_expression
  type: [
    (identifier) @name.reference.class
    (generic_name (identifier) @name.reference.class)
  ])

(base_list [
  (identifier) @name.reference.class
  (generic_name (identifier) @name.reference.class)
])

(variable_declaration type: (identifier) @name.reference.type)

(parameter type: (identifier) @name.reference.type)

(method_declaration returns: (identifier) @name.reference.type)

(property_declaration type: (identifier) @name.reference.type)

(type_argument_list (identifier) @name.reference.type)
