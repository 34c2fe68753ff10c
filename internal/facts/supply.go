package facts

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/whyslow/whyslow/internal/event"
)

// Suppliers says, for each fact the rules can read, which probes supply
// it: any one of them measuring in the run is enough. Facts are named
// "Type.Member" for the fields and methods of Run and Device, and by the
// type alone for Command, whose every member comes from the execs. A fact
// with no probes comes from the run itself (names, stacking, the window)
// and is always there. A test holds this table to the types: every
// exported field and method has its entry.
var Suppliers = map[string][]string{
	"Run.Duration":     nil,
	"Run.Kernel":       nil,
	"Run.MinLatency":   nil,
	"Run.LostEvents":   nil,
	"Run.Devices":      nil,
	"Run.Window":       nil,
	"Run.Find":         nil,
	"Run.Commands":     {event.ProbeExec},
	"Run.Uevents":      {event.ProbeUevent},
	"Run.OffCPUByKind": {event.ProbeOffCPU},
	"Run.SysfsWrites":  {event.ProbeSysfs},
	"Run.Unattributed": {event.ProbeOffCPU, event.ProbeQueueEnter},
	"Run.IOs":          {event.ProbeService},
	"Run.Worst":        {event.ProbeService},
	"Run.Processes":    {event.ProbeSyscall},
	"Run.DirtyLimits":  {event.ProbeWriteback},
	"Run.Pressure":     nil,

	"Device.Name":         nil,
	"Device.ID":           nil,
	"Device.Lower":        nil,
	"Device.Upper":        nil,
	"Device.Submit":       {event.ProbeSubmit},
	"Device.Service":      {event.ProbeService},
	"Device.ServiceTime":  {event.ProbeService},
	"Device.InService":    {event.ProbeService},
	"Device.SubmitCall":   {event.ProbeSubmitFn},
	"Device.Stalls":       {event.ProbeSubmit},
	"Device.QueueWaits":   {event.ProbeQueueEnter, event.ProbeOffCPU},
	"Device.TagWaits":     {event.ProbeOffCPU},
	"Device.Freezes":      {event.ProbeFreeze, event.ProbeOffCPU},
	"Device.SubmitCalls":  {event.ProbeSubmitFn},
	"Device.UpperStalls":  {event.ProbeSubmitFn, event.ProbeSubmit},
	"Device.Uevents":      {event.ProbeUevent},
	"Device.SysfsWrites":  {event.ProbeSysfs},
	"Device.Processes":    {event.ProbeSyscall},
	"Device.Errors":       {event.ProbeDevFault},
	"Device.Timeouts":     {event.ProbeDevFault},
	"Device.Requeues":     {event.ProbeDevFault},
	"Device.IOTimeout":    {event.ProbeDevFault},
	"Device.SCSITimeouts": {event.ProbeDevFault},
	"Device.Recoveries":   {event.ProbeDevFault},
	"Device.ErrorKinds":   {event.ProbeDevFault},
	"Device.FaultVictims": {event.ProbeDevFault},
	"Device.Limits":       {event.ProbeIOLimits},
	"Device.IOCost":       {event.ProbeIOLimits},
	"Device.IOCostState":  {event.ProbeIOCost},
	"Device.InStage":      {event.ProbeSyscall},
	"Device.StageMs":      {event.ProbeSyscall},
	"Device.StageTasks":   {event.ProbeSyscall},
	"Device.StageDelayed": {event.ProbeSyscall},
	"Device.IO":           {event.ProbeSubmit},
	"Device.IOBy":         {event.ProbeSubmit},
	"Device.IOByCgroup":   {event.ProbeSubmit},
	"Device.Dominant":     {event.ProbeSubmit},
	"Device.Wbt":          {event.ProbeWriteback},
	"Device.Dirty":        {event.ProbeWriteback},
	"Device.Journal":      {event.ProbeWriteback},
	"Device.Mounts":       {event.ProbeWriteback},
	"Device.FSType":       {event.ProbeWriteback},

	"Command": {event.ProbeExec},
}

// FactOf names the fact a member of a facts type is, or "" when the type
// is not one rules read facts of (Run, Device, Command).
func FactOf(t reflect.Type, member string) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.PkgPath() != reflect.TypeFor[Run]().PkgPath() {
		return ""
	}
	switch t.Name() {
	case "Command":
		return "Command"
	case "Run", "Device":
		return t.Name() + "." + member
	}
	return ""
}

// Missing says why no probe that supplies a fact measured in the run: one
// line per supplier ("offcpu unavailable (why)"), or nil when one did (or
// the run has no probe status to tell: a timeline made by hand, a trace
// that lost it). A probe on an inferred rung measures nothing itself: the
// probe that infers its events must be one of the suppliers.
func Missing(r *Run, fact string) []string {
	probes, known := Suppliers[fact]
	if !known {
		return []string{fact + " is no fact"}
	}
	if len(probes) == 0 || r == nil || len(r.probes) == 0 {
		return nil
	}
	var why []string
	for _, p := range probes {
		i := slices.IndexFunc(r.probes, func(st event.ProbeStatus) bool { return st.Name == p })
		switch {
		case i < 0:
			why = append(why, p+" did not run")
		case r.probes[i].Status != event.StatusOK:
			why = append(why, fmt.Sprintf("%s unavailable (%s)", p, r.probes[i].Reason))
		case r.probes[i].InferredBy != "":
			why = append(why, fmt.Sprintf("%s inferred by %s", p, r.probes[i].InferredBy))
		default:
			return nil
		}
	}
	return why
}
