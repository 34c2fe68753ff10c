package timeline

import (
	"reflect"
	"slices"
	"unsafe"
)

// memPlan is how to estimate the memory of a value of one type: its size
// and where its strings and slices are (reflection once per type, not per
// value).
type memPlan struct {
	size uintptr
	refs []memRef
	// shared are the string fields tagged `mem:"shared"`: the timeline
	// keeps one copy of each string (Timeline.Admit).
	shared [][]int
}

// memRef is one string or slice inside a value, by its field index path.
type memRef struct {
	path []int
	elem *memPlan // slice elements; nil for a string
}

// planMem plans a type's estimate: every string and slice it holds, in
// nested structs too, except below fields tagged `mem:"shared"`.
func planMem(t reflect.Type) *memPlan {
	p := &memPlan{size: t.Size()}
	var walk func(t reflect.Type, path []int)
	walk = func(t reflect.Type, path []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			at := append(append([]int(nil), path...), i)
			if f.Tag.Get("mem") == "shared" {
				if f.Type.Kind() == reflect.String {
					p.shared = append(p.shared, at)
				}
				continue
			}
			switch f.Type.Kind() {
			case reflect.String:
				p.refs = append(p.refs, memRef{path: at})
			case reflect.Slice:
				p.refs = append(p.refs, memRef{path: at, elem: planElem(f.Type.Elem())})
			case reflect.Struct:
				walk(f.Type, at)
			}
		}
	}
	if t.Kind() == reflect.Struct {
		walk(t, nil)
	}
	return p
}

// planElem plans the elements of a slice.
func planElem(t reflect.Type) *memPlan {
	if t.Kind() == reflect.String {
		return &memPlan{size: t.Size(), refs: []memRef{{}}}
	}
	return planMem(t)
}

// content is the memory v owns besides its own struct: the bytes of its
// strings, and of its slices' elements and what they own.
func (p *memPlan) content(v reflect.Value) int64 {
	var n int64
	for _, r := range p.refs {
		f := v
		if len(r.path) > 0 {
			f = v.FieldByIndex(r.path)
		}
		if r.elem == nil {
			n += int64(f.Len())
			continue
		}
		for i := range f.Len() {
			n += int64(r.elem.size) + r.elem.content(f.Index(i))
		}
	}
	return n
}

// internOverhead is what keeping one string in a timeline's table of shared
// strings costs besides its bytes: the map entry's key and value headers
// and its share of a bucket.
const internOverhead = 48

// intern replaces the shared strings of v (addressable) with the copies
// strs holds, and returns the bytes of those strs does not hold yet (each
// once, with internOverhead) and the strings themselves, to be added to
// strs if v is kept.
func (p *memPlan) intern(v reflect.Value, strs map[string]string) (n int64, fresh []string) {
	for _, path := range p.shared {
		f := v.FieldByIndex(path)
		s := f.String()
		if s == "" {
			continue
		}
		if c, ok := strs[s]; ok {
			if unsafe.StringData(c) != unsafe.StringData(s) {
				f.SetString(c)
			}
			continue
		}
		if slices.Contains(fresh, s) {
			continue
		}
		fresh = append(fresh, s)
		n += int64(len(s)) + internOverhead
	}
	return n, fresh
}
