"""A stand-in for ``slicer.parameterNodeWrapper`` that is as strict as Slicer's (5.8-5.12), for the module tests.

Written from a reading of Slicer's ``Base/Python/slicer/parameterNodeWrapper`` (wrapper, serializers,
validators, guiConnectors, util); no code is taken from it. What it reproduces, because the modules
depend on it:

* **A fresh parameter node gets every default written**, through the parameter's serializer and its
  validators, when the wrapper is constructed: a default no serializer can write (``None`` for
  ``Union[NodeA, NodeB]`` without ``None``) raises ``TypeError: Unable to write value 'None' ...``
  as in Slicer, and a default outside its ``WithinRange`` raises ``ValueError``.
* **Validators on every write**: the serializers' own (``NotNone``, ``IsInstance``: an ``int``
  parameter refuses ``3.0``, a ``Path`` parameter refuses a ``str``) and the annotated ones
  (``WithinRange``, ``Minimum``, ``Maximum``, ``Choice``, ``Exclude``).
* **Storage as Slicer stores it**: numbers, text and paths as parameters, booleans as
  ``"True"``/``"False"``, a node as an empty parameter plus a node reference of the same name, a
  union member ``i`` under ``name.i`` (node references of union members too), ``None`` in an
  ``Optional`` as ``name.i = "True"``; values cached and refreshed on the node's ModifiedEvent.
* **GUI connection rules**: ``connectGui`` takes a ``ui`` namespace (every value must answer
  ``property()``) or a widget; a widget bound to an unknown parameter raises ``ValueError``; the
  connector is chosen by the widget's *exact* class (a subclass of QSpinBox is not a QSpinBox),
  a QComboBox needs a ``Choice`` and holds its choices by index, spin boxes take their range from
  the annotations (else the widest), a node combo box takes its node types from the annotation;
  a widget/type pair Slicer cannot connect raises ``RuntimeError``. Every parameter change writes
  every connected widget; ``disconnectGui`` undoes the widget-to-parameter direction and stops the
  updates, as in Slicer.

What it cannot reproduce: PythonQt's property syntax (the connectors call PySide6 methods
instead), parameter packs, lists, tuples, dicts, enums, ``Any`` and QColor parameters (the
modules use none; declaring one raises ``TypeError`` here rather than being silently accepted),
and the GUI creation helpers.
"""

from __future__ import annotations

import logging
import pathlib
import typing
from typing import Annotated

import slicer
import vtk
from PySide6 import QtWidgets

# -- validators ----------------------------------------------------------------------------------------------------


class Validator:
    def validate(self, value) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsNone(Validator):
    def validate(self, value) -> None:
        if value is not None:
            raise ValueError("Value must be None")


class IsInstance(Validator):
    def __init__(self, classtype) -> None:
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum(Validator):
    def __init__(self, minimum) -> None:
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be at least {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum) -> None:
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be at most {self.maximum}, is {value}")


class Choice(Validator):
    def __init__(self, choices) -> None:
        self.choices = choices

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class Exclude(Validator):
    def __init__(self, excluded) -> None:
        self.excluded = excluded

    def validate(self, value) -> None:
        if value in self.excluded:
            raise ValueError(f"Value is {value}, but must not be one of {self.excluded}")


class Default:
    """``Annotated[T, Default(value)]``: the default when the class gives none."""

    def __init__(self, value=None, *, generator=None) -> None:
        self._value, self._generator = value, generator

    @property
    def value(self):
        return self._generator() if self._generator else self._value


class Decimals:
    def __init__(self, value: int) -> None:
        self.value = value


class SingleStep:
    def __init__(self, value) -> None:
        self.value = value


# -- type helpers --------------------------------------------------------------------------------------------------
def split_annotations(hint) -> tuple:
    """``Annotated[T, a, b]`` -> ``(T, (a, b))``; a plain type -> ``(T, ())``."""
    args = typing.get_args(Annotated[hint, "marker"])
    return args[0], tuple(args[1:-1])


def _is_node_type(t) -> bool:
    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


def _is_union(t) -> bool:
    return typing.get_origin(t) is typing.Union


def is_node_or_union_of_nodes(hint) -> bool:
    base = split_annotations(hint)[0]
    if _is_node_type(base):
        return True
    if _is_union(base):
        return all(a is type(None) or _is_node_type(split_annotations(a)[0]) for a in typing.get_args(base))
    return False


def node_class_names(hint) -> list[str]:
    base = split_annotations(hint)[0]
    types_ = [base] if _is_node_type(base) else [split_annotations(a)[0] for a in typing.get_args(base)]
    return [t().GetClassName() for t in types_ if _is_node_type(t)]


# -- serializers ---------------------------------------------------------------------------------------------------
class Serializer:
    """Reads and writes one parameter of a vtkMRMLScriptedModuleNode; ``validators`` run on every write."""

    def __init__(self, validators=()) -> None:
        self.validators = list(validators)

    def validate(self, value) -> None:
        for validator in self.validators:
            validator.validate(value)

    @staticmethod
    def accepts(type_) -> bool:  # what Slicer's canSerialize answers for a value's type
        raise NotImplementedError

    def default(self):
        raise NotImplementedError

    def is_in(self, node, name: str) -> bool:
        return node.HasParameter(name)

    def write(self, node, name: str, value) -> None:
        self.validate(value)
        self._write(node, name, value)

    def _write(self, node, name: str, value) -> None:
        node.SetParameter(name, str(value))

    def read(self, node, name: str):
        raise NotImplementedError

    def remove(self, node, name: str) -> None:
        node.UnsetParameter(name)


class NumberSerializer(Serializer):
    def __init__(self, type_, validators=()) -> None:
        super().__init__([NotNone(), IsInstance((int, float) if type_ is float else int), *validators])
        self.type = type_

    @staticmethod
    def accepts(type_) -> bool:
        return type_ in (int, float)

    def default(self):
        return 0

    def read(self, node, name):
        return self.type(node.GetParameter(name))


class StringSerializer(Serializer):
    def __init__(self, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(str), *validators])

    @staticmethod
    def accepts(type_) -> bool:
        return type_ is str

    def default(self):
        return ""

    def read(self, node, name):
        return node.GetParameter(name)


PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)


class PathSerializer(Serializer):
    def __init__(self, type_, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(type_), *validators])
        self.type = type_

    @staticmethod
    def accepts(type_) -> bool:
        return type_ in PATH_TYPES

    def default(self):
        return self.type()

    def read(self, node, name):
        return self.type(node.GetParameter(name))


class BoolSerializer(Serializer):
    def __init__(self, validators=()) -> None:
        super().__init__([NotNone(), IsInstance(bool), *validators])

    @staticmethod
    def accepts(type_) -> bool:
        return type_ is bool

    def default(self):
        return False

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "True" if value else "False")

    def read(self, node, name):
        return node.GetParameter(name) == "True"


class NodeSerializer(Serializer):
    def __init__(self, type_, validators=()) -> None:
        super().__init__([IsInstance(type_), *validators])

    @staticmethod
    def accepts(type_) -> bool:
        return _is_node_type(type_)

    def default(self):
        return None

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "")  # marks the parameter as present even when the reference is None
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node, name):
        return node.GetNodeReference(name)

    def remove(self, node, name) -> None:
        node.UnsetParameter(name)
        node.RemoveNodeReferenceIDs(name)


class NoneSerializer(Serializer):
    def __init__(self, validators=()) -> None:
        super().__init__([IsNone(), *validators])

    @staticmethod
    def accepts(type_) -> bool:
        return type_ is type(None)

    def default(self):
        return None

    def _write(self, node, name, value) -> None:
        node.SetParameter(name, "True")

    def read(self, node, name):
        return None


class UnionSerializer(Serializer):
    """``Union[A, B, ...]``: member ``i`` stored under ``name.i``; a value goes to the first member that takes it."""

    def __init__(self, members: list[Serializer], validators=()) -> None:
        super().__init__(validators)
        self.members = members

    def default(self):
        if len(self.members) == 2 and isinstance(self.members[1], NoneSerializer):
            return None  # Optional[X]
        return self.members[0].default()

    @staticmethod
    def _name(name, index) -> str:
        return f"{name}.{index}"

    def is_in(self, node, name) -> bool:
        return any(m.is_in(node, self._name(name, i)) for i, m in enumerate(self.members))

    def _member_for(self, value) -> tuple[int, Serializer]:
        failure = None
        for index, member in enumerate(self.members):
            if member.accepts(type(value)):
                try:
                    member.validate(value)
                    return index, member
                except Exception as exc:  # noqa: BLE001 - the next member may take it, as in Slicer
                    failure = exc
        if failure is not None:
            raise failure
        raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")

    def write(self, node, name, value) -> None:
        self.validate(value)
        index, member = self._member_for(value)
        with slicer.util.NodeModify(node):
            self.remove(node, name)
            member.write(node, self._name(name, index), value)

    def read(self, node, name):
        for index, member in enumerate(self.members):
            if member.is_in(node, self._name(name, index)):
                return member.read(node, self._name(name, index))
        raise KeyError(f"Unable to find value for name: {name}")

    def remove(self, node, name) -> None:
        for index, member in enumerate(self.members):
            member.remove(node, self._name(name, index))


def make_serializer(type_, validators=()) -> Serializer:
    """The serializer Slicer would choose for ``type_``; TypeError for what the double does not model."""
    if _is_union(type_):
        members = [make_serializer(*_unpack(arg)) for arg in typing.get_args(type_)]
        return UnionSerializer(members, validators)
    for candidate in (NumberSerializer, StringSerializer, PathSerializer, BoolSerializer, NodeSerializer,
                      NoneSerializer):
        if candidate.accepts(type_):
            if candidate in (NumberSerializer, PathSerializer, NodeSerializer):
                return candidate(type_, validators)
            return candidate(validators)
    raise TypeError(f"the Slicer double has no serializer for {type_!r} (Slicer's may have one; extend the double)")


def _unpack(hint) -> tuple:
    """``Annotated[T, validators...]`` -> ``(T, validators)``; other annotations are not allowed inside a union."""
    type_, annotations = split_annotations(hint)
    return type_, [a for a in annotations if isinstance(a, Validator)]


# -- the wrapper ---------------------------------------------------------------------------------------------------
class _Parameter:
    def __init__(self, name: str, hint, serializer: Serializer, default) -> None:
        self.name, self.hint, self.serializer, self.default = name, hint, serializer, default

    def read(self, node):
        """The stored value; a parameter that went missing (a node reset by the scene) gets its default, as in Slicer."""
        if not self.serializer.is_in(node, self.name):
            self.serializer.write(node, self.name, self.default.value)
        return self.serializer.read(node, self.name)


def parameterNodeWrapper(classtype=None):  # noqa: N802 - Slicer's name
    """Class decorator: typed, validated, cached properties over a vtkMRMLScriptedModuleNode, bindable to a GUI."""

    def wrap(cls):
        return _process(cls)

    return wrap if classtype is None else wrap(classtype)


def _process(cls):
    parameters: dict[str, _Parameter] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        type_, annotations = split_annotations(hint)
        validators = [a for a in annotations if isinstance(a, Validator)]
        defaults = [a for a in annotations if isinstance(a, Default)]
        unused = [a for a in annotations if not isinstance(a, (Validator, Default, Decimals, SingleStep))]
        if unused:
            logging.warning(f"Unused annotations: {unused}")
        serializer = make_serializer(type_, validators)
        if name in cls.__dict__:
            initial = Default(cls.__dict__[name])
        elif defaults:
            initial = defaults[0]
        else:
            initial = Default(serializer.default())
        parameters[name] = _Parameter(name, hint, serializer, initial)
        setattr(cls, name, property(lambda self, n=name: self._values[n],
                                    lambda self, value, n=name: self.setValue(n, value)))

    for reserved in ("allParameters", "connectGui", "disconnectGui", "getValue", "setValue", "default", "dataType"):
        if reserved in parameters:
            raise ValueError(f"Cannot use reserved name '{reserved}' in a parameterNodeWrapper")
    cls.allParameters = parameters
    cls._is_parameter_node_wrapper = True
    cls.__init__ = _init
    for method in (getValue, setValue, default, dataType, connectGui, connectParametersToGui, disconnectGui,
                   StartModify, EndModify, AddObserver, RemoveObserver, Modified):
        setattr(cls, method.__name__, method)
    return cls


def _init(self, parameterNode) -> None:
    self.parameterNode = parameterNode
    self._guis: dict[int, dict] = {}
    self._next_tag = 0
    self._updating_gui = False
    self._writing = False
    for parameter in self.allParameters.values():
        if not parameter.serializer.is_in(parameterNode, parameter.name):
            parameter.serializer.write(parameterNode, parameter.name, parameter.default.value)
    self._values = {n: p.read(parameterNode) for n, p in self.allParameters.items()}

    def refresh(caller, event) -> None:
        if not self._writing:
            self._values = {n: p.read(parameterNode) for n, p in self.allParameters.items()}

    self._refresh_tag = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, refresh)


def _check_name(self, name: str) -> _Parameter:
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}\n  Found parameters "
                         f"[{', '.join(self.allParameters)}]")
    return self.allParameters[name]


def getValue(self, name):  # noqa: N802
    _check_name(self, name)
    return self._values[name]


def setValue(self, name, value) -> None:  # noqa: N802
    parameter = _check_name(self, name)
    self._writing = True
    try:
        with slicer.util.NodeModify(self.parameterNode):
            parameter.serializer.write(self.parameterNode, name, value)
            self._values[name] = parameter.serializer.read(self.parameterNode, name)
    finally:
        self._writing = False


def default(self, name):
    return _check_name(self, name).default


def dataType(self, name):  # noqa: N802
    return _check_name(self, name).hint


def StartModify(self):  # noqa: N802
    return self.parameterNode.StartModify()


def EndModify(self, wasModifying):  # noqa: N802
    return self.parameterNode.EndModify(wasModifying)


def AddObserver(self, event, callback, priority=0.0):  # noqa: N802
    return self.parameterNode.AddObserver(event, callback, priority)


def RemoveObserver(self, tag):  # noqa: N802
    self.parameterNode.RemoveObserver(tag)


def Modified(self):  # noqa: N802
    self.parameterNode.Modified()


def connectGui(self, gui):  # noqa: N802
    """Bind every widget that has a ``SlicerParameterName`` property; returns the tag for disconnectGui."""
    widgets = gui.findChildren(QtWidgets.QWidget) if getattr(gui, "isWidgetType", lambda: False)() \
        else list(vars(gui).values())
    mapping = {}
    for widget in widgets:
        name = widget.property("SlicerParameterName")
        if name:
            mapping[str(name)] = widget
    return connectParametersToGui(self, mapping)


def connectParametersToGui(self, mapping: dict):  # noqa: N802
    for name in mapping:
        _check_name(self, name)
    connectors = {name: create_connector(widget, self.dataType(name)) for name, widget in mapping.items()}
    tag = self._next_tag
    self._next_tag += 1
    self._guis[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))

        def changed(name=name, connector=connector) -> None:
            if not self._updating_gui:
                with slicer.util.NodeModify(self):
                    self.setValue(name, connector.read())

        connector.on_changed(changed)

    def update_gui(caller, event) -> None:
        if self._updating_gui:
            return
        self._updating_gui = True
        try:
            for guiConnectors in self._guis.values():
                for name, connector in guiConnectors.items():
                    connector.write(self.getValue(name))
        finally:
            self._updating_gui = False

    self.AddObserver(vtk.vtkCommand.ModifiedEvent, update_gui)
    return tag


def disconnectGui(self, tag) -> None:  # noqa: N802
    for connector in self._guis.pop(tag, {}).values():
        connector.on_changed(None)


# -- GUI connectors ------------------------------------------------------------------------------------------------
class Connector:
    """One widget bound to one parameter: ``read``/``write`` the widget, ``signal`` tells of a change."""

    def __init__(self, widget, signal) -> None:
        self.widget, self.signal, self._callback = widget, signal, None

    def on_changed(self, callback) -> None:
        if self._callback is not None:
            self.signal.disconnect(self._slot)
        self._callback = callback
        if callback is not None:
            self.signal.connect(self._slot)

    def _slot(self, *args) -> None:
        if self._callback is not None:
            self._callback()


def _range_of(annotations, unbounded: tuple):
    within = next((a for a in annotations if isinstance(a, WithinRange)), None)
    if within is not None:
        return within.minimum, within.maximum, True
    low = next((a.minimum for a in annotations if isinstance(a, Minimum)), None)
    high = next((a.maximum for a in annotations if isinstance(a, Maximum)), None)
    return (unbounded[0] if low is None else low, unbounded[1] if high is None else high,
            low is not None and high is not None)


def create_connector(widget, hint) -> Connector:
    """Slicer's choice of connector, by the widget's exact class and the parameter's type."""
    from slicer_qt_double import ctkDirectoryButton, ctkPathLineEdit, qMRMLNodeComboBox

    type_, annotations = split_annotations(hint)
    kind = type(widget)
    if kind is QtWidgets.QCheckBox and type_ is bool:
        connector = Connector(widget, widget.stateChanged)
        connector.read, connector.write = widget.isChecked, widget.setChecked
        return connector
    if kind in (QtWidgets.QSpinBox, QtWidgets.QSlider) and type_ is int:
        low, high, bounded = _range_of(annotations, (-2**31, 2**31 - 1))
        if kind is QtWidgets.QSlider and not bounded:
            raise RuntimeError("Cannot have a connection to QSlider where the int type is unbounded.")
        widget.setRange(int(low), int(high))
        connector = Connector(widget, widget.valueChanged)
        connector.read, connector.write = widget.value, widget.setValue
        return connector
    if kind is QtWidgets.QDoubleSpinBox and type_ in (int, float):
        if type_ is int:
            widget.setDecimals(0)
        low, high, _ = _range_of(annotations, (float("-inf"), float("inf")))
        widget.setRange(low, high)
        connector = Connector(widget, widget.valueChanged)
        connector.read = (lambda: int(widget.value())) if type_ is int else widget.value
        connector.write = lambda value: widget.setValue(value)
        return connector
    if kind is QtWidgets.QComboBox and type_ in (int, float, str, bool):
        choice = next((a for a in annotations if isinstance(a, Choice)), None)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        widget.clear()
        for c in choice.choices:
            widget.addItem(str(c))
        connector = Connector(widget, widget.currentIndexChanged)
        connector.read = lambda: choice.choices[widget.currentIndex()]

        def write_choice(value) -> None:
            if value not in choice.choices:
                raise ValueError(f"Unable to find value {value} in choices {choice.choices}")
            widget.setCurrentIndex(list(choice.choices).index(value))

        connector.write = write_choice
        return connector
    if kind is QtWidgets.QLineEdit and type_ is str:
        connector = Connector(widget, widget.textChanged)
        connector.read = widget.text
        connector.write = lambda value: widget.setText(value) if value != widget.text() else None
        return connector
    if kind is QtWidgets.QLabel and type_ is str:
        connector = Connector(widget, _NoSignal())
        connector.read, connector.write = widget.text, widget.setText
        return connector
    if kind is ctkPathLineEdit and type_ in PATH_TYPES:
        connector = Connector(widget, widget.currentPathChanged)
        connector.read = lambda: type_(widget.currentPath())
        connector.write = lambda value: widget.setCurrentPath(str(value))
        return connector
    if kind is ctkDirectoryButton and type_ in PATH_TYPES:
        connector = Connector(widget, widget.directoryChanged)
        connector.read = lambda: type_(widget.directory())
        connector.write = lambda value: widget.setDirectory(str(value))
        return connector
    if kind is qMRMLNodeComboBox and is_node_or_union_of_nodes(hint):
        widget.setNodeTypes(node_class_names(hint))
        connector = Connector(widget, widget.currentNodeChanged)
        connector.read, connector.write = widget.currentNode, widget.setCurrentNode
        return connector
    raise RuntimeError(f"Unable to create GUI connector from datatype '{hint}' to widget type '{kind}'.")


class _NoSignal:
    """QLabel has no change signal: connecting and disconnecting do nothing (as in Slicer)."""

    def connect(self, slot) -> None:
        pass

    def disconnect(self, slot) -> None:
        pass
